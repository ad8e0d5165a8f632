import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from monai_uda.validators.predictions import Predictions, eval_mode, predict_probabilities


class Threshold(torch.nn.Module):
    """Pixel-wise: foreground where the image exceeds ``t``; records the mode it ran in."""

    def __init__(self, t=0.5, as_tuple=False):
        super().__init__()
        self.t, self.as_tuple, self.seen_training = t, as_tuple, []

    def forward(self, x):
        self.seen_training.append(self.training)
        d = 10.0 * (x[:, :1] - self.t)
        logits = torch.cat([-d, d], 1)
        return (logits, torch.zeros_like(d)) if self.as_tuple else logits


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 16, 16, generator=g), torch.rand(1, 12, 20, generator=g)]


def test_probabilities_are_float16_softmax_maps_of_the_network_in_eval_mode():
    net = Threshold().train()
    images = _images()
    probs = predict_probabilities(net, images)
    assert [tuple(p.shape) for p in probs] == [(2, 16, 16), (2, 12, 20)]
    assert all(p.dtype == torch.float16 for p in probs)
    for p, x in zip(probs, images):
        assert torch.allclose(p.float().sum(0), torch.ones(p.shape[1:]), atol=1e-3)
        expected = torch.sigmoid(2 * 10.0 * (x[0] - 0.5))  # softmax of (-d, d)
        assert torch.allclose(p[1].float(), expected, atol=2e-3)
    assert net.seen_training == [False, False] and net.training  # ran in eval, mode restored


def test_sliding_window_and_tuple_outputs_give_the_plain_probabilities():
    images = _images()
    plain = predict_probabilities(Threshold(), images, inferer=SimpleInferer(), dtype=torch.float32)
    sliding = predict_probabilities(Threshold(as_tuple=True), images,
                                    inferer=SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=2), dtype=torch.float32)
    for a, b in zip(plain, sliding):
        assert torch.allclose(a, b, atol=1e-5)


def test_eval_mode_restores_each_modules_own_flag():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    net[1].eval()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training


def test_bad_images_are_named():
    with pytest.raises(ValueError, match=r"images\[1\]"):
        predict_probabilities(Threshold(), [torch.rand(1, 8, 8), torch.rand(8, 8)])
    with pytest.raises(ValueError, match="non-empty"):
        predict_probabilities(Threshold(), [])


def test_predictions_derive_argmax_and_check_their_parts():
    p = torch.tensor([[[0.9, 0.2]], [[0.1, 0.8]]])  # (2 classes, 1, 2)
    pred = Predictions([p], source_probabilities=[p.flip(0)])
    assert pred.num_classes == 2 and len(pred) == 1
    assert pred.argmax[0].tolist() == [[0, 1]] and pred.source_argmax[0].tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="source_probabilities"):
        Predictions([p], source_probabilities=[torch.rand(3, 1, 2)])
    with pytest.raises(ValueError, match=r"others_argmax\[0\]"):
        Predictions([p], others_argmax=[[torch.zeros(2, 2)]])
    with pytest.raises(ValueError, match="num_classes"):
        Predictions(argmax=[torch.zeros(1, 2)])
    with pytest.raises(ValueError, match="needs Predictions.source_probabilities"):
        pred_without = Predictions([p])
        pred_without.require("source_probabilities", "source_agreement_score")
