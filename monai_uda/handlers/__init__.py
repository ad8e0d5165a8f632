from .agreement_early_stop import AgreementEarlyStop
from .atomic_checkpoint_saver import AtomicCheckpointSaver
from .bn_reestimation import BNReestimation
from .pseudo_label_rounds import PseudoLabelRounds
from .segmentation_metrics_saver import SegmentationMetricsSaver

__all__ = ["AgreementEarlyStop", "AtomicCheckpointSaver", "BNReestimation", "PseudoLabelRounds", "SegmentationMetricsSaver"]
