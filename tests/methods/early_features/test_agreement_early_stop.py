import pytest
import torch
from ignite.engine import Engine, Events

from monai_uda.methods.early_features.refinement import agreement_dice
from monai_uda.methods.early_features.agreement_early_stop import AgreementEarlyStop
from monai_uda.methods.early_features.early_head import EarlyFeaturesSegmentor
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


def _guarded_run(values, **kw):
    """Metric sequence ``values`` with a network whose weight is set to the epoch number after each epoch."""
    net = torch.nn.Linear(1, 1)
    engine = Engine(lambda e, b: None)
    engine.network = net

    @engine.on(Events.EPOCH_COMPLETED)
    def _step(e):
        with torch.no_grad():
            net.weight.fill_(float(e.state.epoch))
        e.state.metrics["agreement"] = values[e.state.epoch - 1]

    AgreementEarlyStop(restore_on_divergence=True, **kw).attach(engine)
    engine.run([0], max_epochs=len(values))
    return engine.state, net


def test_divergence_restores_best_epoch_and_stops():
    # best 0.7 at epoch 2; epoch 3 drops 0.05 (> 0.02) below it -> restore epoch 2's weights, stop at 3
    state, net = _guarded_run([0.6, 0.7, 0.65, 0.9])
    assert state.epoch == 3 and state.agreement_diverged and state.restored_epoch == 2
    assert not state.agreement_converged and state.epochs_to_convergence == 3
    assert float(net.weight.detach()) == 2.0
    assert state.agreement_history == [0.6, 0.7, 0.65]


def test_divergence_tolerates_small_drops_and_is_off_by_default():
    # drops of 0.01 < divergence_delta: no restore; the min_delta rule never fires (changes >= 0.01)
    state, net = _guarded_run([0.6, 0.7, 0.69, 0.70], min_delta=0.005)
    assert not state.agreement_diverged and state.restored_epoch is None and float(net.weight.detach()) == 4.0
    state, net = _guarded_run([0.6, 0.7, 0.65, 0.9], divergence_delta=0.1)
    assert not state.agreement_diverged and float(net.weight.detach()) == 4.0
    # without the guard the same fall is just a change: training goes on
    state = _run([0.6, 0.7, 0.65, 0.9], max_epochs=4)
    assert state.epoch == 4 and not state.agreement_diverged


def test_divergence_against_the_initial_agreement_restores_the_untouched_network():
    torch.manual_seed(0)
    seg = EarlyFeaturesSegmentor(UDAUNet(spatial_dims=2, features=(4, 4, 8, 8, 8, 4)), hidden_channels=4)
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    loader = [torch.rand(2, 1, 16, 16)]
    engine = Engine(lambda e, b: None)
    engine.network = seg
    handler = AgreementEarlyStop(data_loader=loader, compare_with_initial=True, restore_on_divergence=True)
    handler.attach(engine)
    values = iter([0.8, 0.5])  # d_0 = 0.8 before refinement, d_1 = 0.5 after epoch 1

    def fake_agreement(eng):
        return next(values)

    handler.compute_agreement = fake_agreement

    @engine.on(Events.EPOCH_STARTED)
    def _perturb(e):  # "refinement" changes every weight and BatchNorm buffer
        with torch.no_grad():
            for v in seg.state_dict().values():
                if v.is_floating_point():
                    v.add_(1.0)

    engine.run([0], max_epochs=3)
    assert engine.state.agreement_diverged and engine.state.restored_epoch == 0 and engine.state.epoch == 1
    assert all(torch.equal(v, before[k]) for k, v in seg.state_dict().items())


def test_bad_divergence_delta():
    with pytest.raises(ValueError, match="divergence_delta"):
        AgreementEarlyStop(divergence_delta=-1)
