import pytest
import torch
from monai.engines import SupervisedTrainer
from torch import nn

from monai_uda.methods.shallow2deep.s2d import Shallow2DeepLoss
from monai_uda.methods.shallow2deep.pseudo_label_update import PseudoLabelUpdate


def _trainer(consistency, alpha=0.5, warmup=False, loss=None, n=2):
    torch.manual_seed(0)
    net = nn.Conv2d(1, 2, 3, padding=1)
    upd = PseudoLabelUpdate(net, alpha=alpha, ema_warmup=warmup)
    batch = {"image": torch.randn(2, 1, 8, 8), "pseudo": torch.rand(2, 1, 8, 8)}
    tr = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch] * n, network=net,
                           optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                           loss_function=loss or Shallow2DeepLoss(consistency=consistency), iteration_update=upd)
    return tr, net, upd


def test_teacher_follows_eq2_after_each_step():
    tr, net, upd = _trainer(True, alpha=0.5)
    w0 = upd.teacher.weight.detach().clone()
    tr.run()
    assert upd.step == 2 and not torch.allclose(upd.teacher.weight, w0)
    assert not any(p.requires_grad for p in upd.teacher.parameters())
    assert "consistency" in tr.loss_function.last_terms


def test_warmup_alpha_and_switches():
    _, _, upd = _trainer(False, alpha=0.999, warmup=True)
    assert upd.current_alpha() == 0.0  # step 0: the teacher copies the student
    upd.step = 3
    assert upd.current_alpha() == pytest.approx(0.75)
    upd.step = 10**6
    assert upd.current_alpha() == 0.999
    tr, _, upd = _trainer(False)
    tr.run()
    assert "consistency" not in tr.loss_function.last_terms


def test_single_step_matches_eq2():
    tr, net, upd = _trainer(False, alpha=0.25, n=1)
    w_teacher = upd.teacher.weight.detach().clone()
    tr.run()
    expected = 0.25 * w_teacher + 0.75 * net.weight.detach()
    torch.testing.assert_close(upd.teacher.weight, expected)


def test_wrong_loss_is_refused():
    tr, _, _ = _trainer(False, loss=nn.MSELoss())
    with pytest.raises(TypeError, match="Shallow2DeepLoss"):
        tr.run()
