from .check_finite import CheckFinited
from .match_channels import MatchChannels, MatchChannelsd
from .pipelines import load_transforms, segmentation_transforms

__all__ = ["CheckFinited", "MatchChannels", "MatchChannelsd", "load_transforms", "segmentation_transforms"]
