from .atomic_checkpoint_saver import AtomicCheckpointSaver
from .segmentation_metrics_saver import SegmentationMetricsSaver

__all__ = ["AtomicCheckpointSaver", "SegmentationMetricsSaver"]
