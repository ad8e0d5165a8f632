from .cyclegan import CycleGANLoss, cycle_loss, identity_loss
from .variational_dice import VariationalSamplingDiceLoss, plain_dice_loss, squared_dice_loss

__all__ = [
    "CycleGANLoss",
    "VariationalSamplingDiceLoss",
    "cycle_loss",
    "identity_loss",
    "plain_dice_loss",
    "squared_dice_loss",
]
