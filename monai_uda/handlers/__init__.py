"""Ignite handlers that more than one method uses (a method's own handlers live in its ``methods/<method>/``)."""

from .atomic_checkpoint_saver import AtomicCheckpointSaver
from .segmentation_metrics_saver import SegmentationMetricsSaver
from .validation_history import ValidationHistory
from .validator_checkpoint import ValidatorCheckpointSelector

__all__ = ["AtomicCheckpointSaver", "SegmentationMetricsSaver", "ValidationHistory", "ValidatorCheckpointSelector"]
