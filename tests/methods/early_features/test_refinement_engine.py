"""One-shot inferer, summary writer and checkpoint chaining of the early-refinement engine module."""

from __future__ import annotations

import json

import pytest
import torch

from monai_uda.methods.early_features.refinement_engine import (
    OneShotRefinementInferer,
    create_early_refinement_trainer,
    write_refinement_summary,
)
from monai_uda.methods.early_features.early_head import EarlyFeaturesSegmentor
from monai_uda.networks.unet import UDAUNet

FEATURES = (4, 4, 8, 8, 8, 4)


def _seg(dims=2):
    torch.manual_seed(0)
    return EarlyFeaturesSegmentor(UDAUNet(spatial_dims=dims, out_channels=2, features=FEATURES), hidden_channels=4)


@pytest.mark.parametrize("dims,roi", [(2, [16, 16]), (3, None)])
def test_one_shot_inferer_refines_copies_only(dims, roi):
    seg = _seg(dims).eval()
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    n = 2 if dims == 2 else 1
    # 3D: 32^3, so that the bottleneck keeps more than one value per channel (the default reestimate_bn "all"
    # runs every BatchNorm layer on batch statistics)
    x = torch.randn(n, 1, *([32] * dims)) if dims == 3 else torch.randn(n, 1, 32, 16)
    inferer = OneShotRefinementInferer(roi_size=roi, num_samples=2, max_epochs=2, lr=1e-2, progress=False)
    with torch.no_grad():  # as inside a SupervisedEvaluator
        out = inferer(x, seg)
    assert isinstance(out, torch.Tensor) and out.shape == (n, 2, *x.shape[2:])
    assert all(torch.equal(v, before[k]) for k, v in seg.state_dict().items())  # evaluator's model untouched
    assert len(inferer.history) == n
    for h in inferer.history:
        assert 1 <= h["epochs_to_convergence"] <= 2
        assert len(h["agreement_history"]) == h["epochs_to_convergence"]  # no guard by default: no d_0
    # the prediction is that of a refined model, not of the original one
    with torch.no_grad():
        seg.inference = True
        assert not torch.allclose(out[:1], inferer.window(x[:1], seg))


def test_one_shot_inferer_bad_input():
    with pytest.raises(TypeError, match="EarlyFeaturesSegmentor"):
        OneShotRefinementInferer()(torch.zeros(1, 1, 16, 16), UDAUNet(spatial_dims=2, features=FEATURES))
    with pytest.raises(ValueError, match="roi_size"):
        OneShotRefinementInferer(roi_size=[16, 16, 16], progress=False)(torch.zeros(1, 1, 16, 16), _seg())
    with pytest.raises(ValueError, match="num_samples"):
        OneShotRefinementInferer(num_samples=0)


def test_write_summaries(tmp_path):
    seg = _seg()
    loader = [torch.randn(2, 1, 16, 16)]
    trainer = create_early_refinement_trainer(seg, loader, max_epochs=2, min_delta=0.0)
    trainer.run()
    path = write_refinement_summary(trainer, str(tmp_path / "s.json"), extra={"note": 1})
    s = json.loads(open(path).read())
    assert s["mode"] == "target-set" and s["epochs_to_convergence"] == 2 and s["iterations"] == 2 and s["note"] == 1
    inf = OneShotRefinementInferer(max_epochs=2, progress=False)
    inf.history = [{"epochs_to_convergence": 2}, {"epochs_to_convergence": 4}]
    s = json.loads(open(write_refinement_summary(inf, str(tmp_path / "o.json"))).read())
    assert s["items"] == 2 and s["mean_epochs_to_convergence"] == 3.0 and s["max_epochs_to_convergence"] == 4
    assert not list(tmp_path.glob(".tmp*"))
