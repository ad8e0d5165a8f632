
import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from monai_uda.methods.bn_reestimation.reestimation import reestimate_bn
from monai_uda.methods.bn_reestimation.reestimation_handler import BNReestimation


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)).eval()


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=6):
        g = torch.Generator().manual_seed(3)
        self.x = torch.rand(n, 1, 8, 8, generator=g) * 3 + 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i]}


def test_handler_at_started_equals_core_function_and_runs_once():
    ds = _Images()
    expected = reestimate_bn(_net(), [ds.x[:4], ds.x[4:]], mode="reset", progress=False)
    net = _net()
    weights = {k: v.clone() for k, v in net.named_parameters()}
    handler = BNReestimation(ds, mode="reset", batch_size=4, event="started", progress=False)
    evaluator = Engine(lambda e, b: None)
    evaluator.network = net
    handler.attach(evaluator)
    handler.attach(evaluator)  # attaching twice registers once
    evaluator.run([0, 1], max_epochs=1)
    assert handler.calls == 1
    for k in ("1.running_mean", "1.running_var", "4.running_mean", "4.running_var"):
        torch.testing.assert_close(net.state_dict()[k], expected.state_dict()[k])
    for k, v in net.named_parameters():
        assert torch.equal(v, weights[k])
    evaluator.run([0], max_epochs=1)  # once=True: a second STARTED does not re-adapt
    assert handler.calls == 1


def test_handler_standalone_with_explicit_network_and_event_member():
    net = _net()
    before = net[1].running_mean.clone()
    loader = [torch.rand(2, 1, 8, 8) + 5]
    handler = BNReestimation(loader, network=net, alpha=1.0, layers=1, event=Events.EPOCH_STARTED, once=False, progress=False)
    out = handler()
    assert out is net and handler.calls == 1
    assert not torch.equal(net[1].running_mean, before)
    handler()
    assert handler.calls == 2


def test_handler_errors():
    with pytest.raises(ValueError, match="event"):
        BNReestimation([torch.rand(2, 1, 8, 8)], event="NOT_AN_EVENT")
    with pytest.raises(ValueError, match="mode"):
        BNReestimation([torch.rand(2, 1, 8, 8)], mode="bad")
    with pytest.raises(ValueError, match="network"):
        BNReestimation([torch.rand(2, 1, 8, 8)], progress=False)(Engine(lambda e, b: None))
    with pytest.raises(ValueError, match="no BatchNorm"):
        BNReestimation([torch.rand(2, 1, 8, 8)], network=nn.Conv2d(1, 1, 1), progress=False)()


def test_handler_from_bundle_config():
    from monai.bundle import ConfigParser

    net = _net()
    parser = ConfigParser(
        {
            "network": "$@net_obj",
            "handler": {
                "_target_": "monai_uda.methods.bn_reestimation.reestimation_handler.BNReestimation",
                "data": "$[torch.rand(3, 1, 8, 8) * 2]",
                "network": "@network",
                "mode": "reset",
                "progress": False,
            },
        }
    )
    parser["net_obj"] = net
    handler = parser.get_parsed_content("handler")
    assert isinstance(handler, BNReestimation) and handler.network is net
    handler()
    assert handler.calls == 1
