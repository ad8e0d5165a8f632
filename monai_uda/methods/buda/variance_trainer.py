"""`VarianceSupervisedTrainer`: MONAI's ``SupervisedTrainer`` for networks that return ``(O, V)`` (BUDA-Seg).

The standard ``SupervisedTrainer`` iteration already does what Li et al. needs: one forward pass
(``inferer(inputs, network)``) gives the pair ``(O, V)`` of
:class:`~monai_uda.methods.buda.variance_head.VarianceUNet`, and
:class:`~monai_uda.methods.buda.variational_dice.VariationalSamplingDiceLoss` takes that pair (Eq. 1-3). The
subclass only splits the pair afterwards, so that ``engine.state.output["pred"]`` holds the logits O (for
postprocessing, metrics and handlers, like any segmentation trainer) and ``engine.state.output["variance"]``
holds V.
"""

from __future__ import annotations

from typing import Any

from monai.engines import SupervisedTrainer
from monai.utils.enums import CommonKeys as Keys

__all__ = ["VarianceSupervisedTrainer"]


class VarianceSupervisedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose network output may be the pair ``(logits, variance)``.

    The loss function receives the pair unchanged; after the step, ``output["pred"]`` is the logits and
    ``output[variance_key]`` the variance map. Arguments are those of ``SupervisedTrainer`` plus
    ``variance_key`` (default ``"variance"``). A network returning a single tensor works as usual.
    """

    def __init__(self, *args: Any, variance_key: str = "variance", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variance_key = variance_key

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict) -> dict:
        output = super()._iteration(engine, batchdata)
        pred = output.get(Keys.PRED)
        if isinstance(pred, (tuple, list)):
            if len(pred) != 2:
                raise ValueError(f"the network must return logits or (logits, variance), got {len(pred)} outputs.")
            output[Keys.PRED], output[self.variance_key] = pred[0], pred[1].detach()
        return output
