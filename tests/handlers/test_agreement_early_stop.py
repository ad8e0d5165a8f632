import pytest
import torch
from ignite.engine import Engine, Events

from monai_uda.adaptation.early_refinement import agreement_dice
from monai_uda.handlers.agreement_early_stop import AgreementEarlyStop
from monai_uda.networks.early_head import EarlyFeaturesSegmentor
from monai_uda.networks.unet import UDAUNet


def _engine_with_sequence(values):
    """An ignite engine whose metric 'agreement' takes ``values[epoch - 1]`` at the end of each epoch."""
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _set_metric(e):
        e.state.metrics["agreement"] = values[e.state.epoch - 1]

    return engine


def _run(values, max_epochs=20, **kw):
    engine = _engine_with_sequence(values)
    AgreementEarlyStop(**kw).attach(engine)  # attached after the metric setter, as a metric would be
    engine.run([0, 1], max_epochs=max_epochs)
    return engine.state


def test_stops_at_first_small_change():
    # |diffs| = 0.1, 0.02, 0.003 -> the change drops below 0.005 after epoch 4
    values = [0.5, 0.6, 0.62, 0.623, 0.7, 0.7]
    state = _run(values)
    assert state.epoch == 4
    assert state.epochs_to_convergence == 4 and state.agreement_converged
    assert state.agreement_history == values[:4]


def test_threshold_configurable_and_decreasing_values():
    values = [0.9, 0.8, 0.78, 0.779]  # diffs 0.1, 0.02, 0.001
    assert _run(values, min_delta=0.05).epochs_to_convergence == 3
    assert _run(values).epochs_to_convergence == 4


def test_first_epoch_never_stops_alone():
    # a single value has nothing to compare with: stop at epoch 2 at the earliest
    assert _run([0.5, 0.5, 0.5]).epochs_to_convergence == 2


def test_max_epochs_without_convergence():
    values = [0.1 * i for i in range(1, 11)]  # always changes by 0.1
    state = _run(values, max_epochs=5)
    assert state.epoch == 5 and state.epochs_to_convergence == 5 and not state.agreement_converged
    # the handler's own cap stops earlier than the engine's max_epochs
    engine = _engine_with_sequence(values)
    AgreementEarlyStop(max_epochs=3).attach(engine)
    engine.run([0], max_epochs=10)
    assert engine.state.epoch == 3 and engine.state.epochs_to_convergence == 3
    assert not engine.state.agreement_converged


def test_missing_metric_is_a_clear_error():
    engine = Engine(lambda e, b: None)
    AgreementEarlyStop(metric_name="nope").attach(engine)
    with pytest.raises(KeyError, match="nope"):
        engine.run([0], max_epochs=2)


def test_computes_agreement_on_loader_and_restores_flags():
    torch.manual_seed(0)
    seg = EarlyFeaturesSegmentor(UDAUNet(spatial_dims=2, features=(4, 4, 8, 8, 8, 4)), hidden_channels=4)
    loader = [{"image": torch.rand(2, 1, 16, 16)}, torch.rand(1, 1, 16, 16)]
    seg.train()
    with torch.no_grad():
        seg.eval()
        per_image = [agreement_dice(*seg(b["image"] if isinstance(b, dict) else b)) for b in loader]
        seg.train()
    expected = float(torch.cat(per_image).mean())
    engine = Engine(lambda e, b: None)
    engine.network = seg
    handler = AgreementEarlyStop(data_loader=loader, compare_with_initial=True)
    handler.attach(engine)
    engine.run([0], max_epochs=3)
    # the network never changes here, so d_1 == d_0 and the rule fires after epoch 1
    assert engine.state.agreement_history == pytest.approx([expected, expected])
    assert engine.state.epochs_to_convergence == 1
    assert engine.state.metrics["agreement"] == pytest.approx(expected)
    assert seg.training and all(m.training for m in seg.modules())
    with pytest.raises(ValueError, match="compare_with_initial"):
        AgreementEarlyStop(compare_with_initial=True)
