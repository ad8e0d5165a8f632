from .segmentation_metrics_saver import SegmentationMetricsSaver

__all__ = ["SegmentationMetricsSaver"]
