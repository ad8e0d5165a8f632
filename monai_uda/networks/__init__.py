from .features import FeatureRecorder
from .unet import DEFAULT_FEATURES, LEVEL_MODULES, UDAUNet

__all__ = ["UDAUNet", "DEFAULT_FEATURES", "LEVEL_MODULES", "FeatureRecorder"]
