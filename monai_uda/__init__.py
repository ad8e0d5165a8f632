"""monai-uda: unsupervised domain adaptation for MONAI segmentation models."""

__version__ = "0.1.0"

__all__ = ["__version__"]
