"""`ValidationHistory`: the validation curve of a training, one CSV row per validation."""

from __future__ import annotations

import os
from ignite.engine import Engine, Events

from monai_uda.utils import atomic_write_text

__all__ = ["ValidationHistory"]


class ValidationHistory:
    """Append an evaluator's metrics to ``path`` (CSV) after every validation run.

    Attach it to the evaluator that a ``ValidationHandler`` runs: the evaluator's ``state.epoch`` is then
    the trainer's epoch. Each row holds ``epoch``, ``iteration`` (``epoch x epoch_length``, the training
    iterations seen so far) and every metric of ``state.metrics``. The file is rewritten atomically each
    time, so it always holds the whole curve; an existing file is continued (a resumed training).

    Args:
        path: the CSV file.
        epoch_length: training iterations per epoch (for the ``iteration`` column); ``None`` leaves it out.
        optimizer: adds an ``lr`` column, the learning rate after this validation (e.g. of a plateau schedule).
    """

    def __init__(self, path: str, epoch_length: int | None = None, optimizer=None):
        self.path = path
        self.epoch_length = epoch_length
        self.optimizer = optimizer
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        if os.path.isfile(self.path):
            import pandas as pd

            self.rows = pd.read_csv(self.path).to_dict("records")
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        import pandas as pd

        epoch = int(engine.state.epoch)
        row = {"epoch": epoch}
        if self.epoch_length:
            row["iteration"] = epoch * int(self.epoch_length)
        row.update({k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))})
        if self.optimizer is not None:
            row["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch] + [row]
        atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))
