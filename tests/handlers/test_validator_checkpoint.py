"""ValidatorCheckpointSelector: score the network every N epochs, keep the best weights, restore them at the end."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from monai_uda.handlers import ValidatorCheckpointSelector
from monai_uda.validators import VALIDATORS, register_validator
from toy_networks import Threshold, blobs


def trainer(network: Threshold, thresholds: list[float]) -> Engine:
    """An engine whose epoch k sets the threshold to thresholds[k - 1] (one iteration per epoch)."""

    def step(engine, batch):
        with torch.no_grad():
            network.t.fill_(thresholds[engine.state.epoch - 1])

    return Engine(step)


@pytest.fixture
def by_threshold():
    """A registered validator that scores a Threshold network by -|t - 0.5| (best at t = 0.5), with an option."""
    calls = []

    @register_validator("test_threshold_score", needs={"network"})
    def score(candidate, offset=0.0):
        calls.append(candidate.name)
        return -abs(candidate.network.t.item() - 0.5) + offset

    yield calls
    VALIDATORS.pop("test_threshold_score", None)


def test_the_best_epoch_by_im_is_kept_not_the_collapsed_last_one():
    net = Threshold(-10.0)  # the starting weights: everything foreground (no information, im = 0)
    engine = trainer(net, [0.5, 10.0])  # epoch 1 segments the blobs, epoch 2 collapses to background
    selector = ValidatorCheckpointSelector(net, blobs(), validators=["im", "entropy"])
    selector.attach(engine)
    engine.run([0], max_epochs=2)
    history = engine.state.validator_history
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert history[1]["im"] > 0.3 and abs(history[0]["im"]) < 1e-3 and abs(history[2]["im"]) < 1e-3
    assert all("entropy" in r and r["seconds"] > 0 for r in history)
    assert engine.state.validator_best == {"epoch": 1, "score": history[1]["im"], "key": "im"}
    assert net.t.item() == 0.5  # restored: the last epoch's 10.0 is gone
    assert net.training  # scoring ran in eval mode and put the training flag back


def test_interval_last_epoch_checkpoint_file_and_options(by_threshold, tmp_path):
    net = Threshold(3.0)
    engine = trainer(net, [2.0, 1.0, 0.75, 0.6, 0.9])
    path = tmp_path / "best.pt"
    selector = ValidatorCheckpointSelector(net, blobs(), validators=["test_threshold_score"], interval=2,
                                           path=str(path), options={"test_threshold_score": {"offset": 1.0}})
    selector.attach(engine)
    engine.run([0], max_epochs=5)
    history = engine.state.validator_history
    assert [r["epoch"] for r in history] == [0, 2, 4, 5]  # every 2 epochs, the start and always the last one
    assert [round(r["test_threshold_score"], 4) for r in history] == [-1.5, 0.5, 0.9, 0.6]  # offset 1 applied
    assert selector.best_epoch == 4 and net.t.item() == pytest.approx(0.6)
    assert float(torch.load(path, weights_only=True)["t"]) == pytest.approx(0.6)  # the atomic checkpoint
    assert len(by_threshold) == 4


def test_no_epoch_beats_the_start_keeps_the_start_and_load_best_false_keeps_the_last(by_threshold):
    net = Threshold(0.5)  # the start is already the best; ties go to it
    engine = trainer(net, [0.5, 2.0, 3.0])
    ValidatorCheckpointSelector(net, blobs(), validators=["test_threshold_score"]).attach(engine)
    engine.run([0], max_epochs=3)
    assert engine.state.validator_best["epoch"] == 0 and net.t.item() == 0.5

    net = Threshold(2.0)
    engine = trainer(net, [0.5, 3.0])
    selector = ValidatorCheckpointSelector(net, [{"image": x} for x in blobs()], validators=["test_threshold_score"],
                                           score_initial=False, load_best=False)
    selector.attach(engine)
    engine.run([0], max_epochs=2)
    assert [r["epoch"] for r in engine.state.validator_history] == [1, 2]
    assert selector.best_epoch == 1 and net.t.item() == 3.0  # not restored
    assert float(selector.best_state["t"]) == 0.5


def test_source_agreement_uses_the_source_model_once():
    source, net = Threshold(0.5), Threshold(0.5)
    engine = trainer(net, [0.5, -10.0])
    selector = ValidatorCheckpointSelector(net, blobs(), validators=["source_agreement"], source_network=source)
    selector.attach(engine)
    engine.run([0], max_epochs=2)
    scores = [r["source_agreement"] for r in engine.state.validator_history]
    assert scores[0] == scores[1] == 1.0 and scores[2] < 0.5
    assert selector.best_epoch == 0


def test_refused_settings_are_one_line():
    net = Threshold(0.5)
    for kwargs, message in (({"validators": ["consensus"]}, "one network at a time"),
                            ({"validators": ["source_agreement"]}, "pass source_network"),
                            ({"validators": ["foreground_fraction"]}, "needs source_statistics"),
                            ({"validators": ["im"], "key": "mixval"}, "is not one of validators"),
                            ({"validators": ["nope"]}, "unknown validator 'nope'"),
                            ({"validators": ["im"], "interval": 0}, "interval must be at least 1"),
                            ({"validators": ["im"], "options": {"mixval": {}}}, "options for validators not run")):
        with pytest.raises(ValueError) as e:
            ValidatorCheckpointSelector(net, blobs(), **kwargs)
        assert message in str(e.value) and "\n" not in str(e.value), kwargs
