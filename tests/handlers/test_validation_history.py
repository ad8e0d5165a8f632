"""ValidationHistory: one CSV row per validation, continued by a resumed training."""

from __future__ import annotations

import pandas as pd
from ignite.engine import Engine, Events

from monai_uda.handlers import ValidationHistory


def test_rows_per_validation_and_continuation(tmp_path):
    path = tmp_path / "h.csv"
    ev = Engine(lambda e, b: None)
    ValidationHistory(str(path), epoch_length=25).attach(ev)
    scores = iter([0.2, 0.5, 0.4])

    @ev.on(Events.EPOCH_STARTED)
    def _set(engine):
        engine.state.metrics = {"val_mean_dice": next(scores), "note": "not a number"}

    ev.run([0], max_epochs=3)
    h = pd.read_csv(path)
    assert list(h.epoch) == [1, 2, 3] and list(h.iteration) == [25, 50, 75]
    assert list(h.val_mean_dice) == [0.2, 0.5, 0.4] and "note" not in h and "lr" not in h

    # a resumed training continues the file and replaces what it validates again
    ev2 = Engine(lambda e, b: None)
    ValidationHistory(str(path), epoch_length=25).attach(ev2)

    @ev2.on(Events.EPOCH_STARTED)
    def _set2(engine):
        engine.state.metrics = {"val_mean_dice": 0.9}

    ev2.load_state_dict({"epoch": 2, "max_epochs": 3, "epoch_length": 1})  # resumed after epoch 2
    ev2.run([0])
    h = pd.read_csv(path)
    assert list(h.epoch) == [1, 2, 3] and list(h.val_mean_dice) == [0.2, 0.5, 0.9]


def test_learning_rate_column(tmp_path):
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ev = Engine(lambda e, b: None)
    ValidationHistory(str(tmp_path / "h.csv"), optimizer=opt).attach(ev)

    @ev.on(Events.EPOCH_STARTED)
    def _set(engine):
        engine.state.metrics = {"val_mean_dice": 0.5}
        opt.param_groups[0]["lr"] /= 2

    ev.run([0], max_epochs=2)
    h = pd.read_csv(tmp_path / "h.csv")
    assert list(h.lr) == [0.05, 0.025] and "iteration" not in h
