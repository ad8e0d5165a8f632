"""Run a bundle config from Python with overrides (what the benchmark and the tests use)."""

from __future__ import annotations

import logging as _logging
import os
from typing import Any, Sequence

from monai.bundle import ConfigWorkflow

from .locate import bundle_dir

__all__ = ["run_bundle"]


class _NoLoggingFileNotice(_logging.Filter):
    """Drop MONAI's "Logging file is set to False" warning: from Python, no logging file is the intent."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Logging file is set to False")


_logging.getLogger("monai.bundle.workflows").addFilter(_NoLoggingFileNotice())


def run_bundle(name: str, config: str | Sequence[str], workflow_type: str | None = "train",
               logging: bool = False, **override: Any) -> ConfigWorkflow:
    """Initialise, run and finalise one config (or a layered list) of bundle ``name``.

    Args:
        name: bundle folder name under :func:`~monai_uda.bundle.locate.bundles_root` (the repository's
            ``bundles/``, or the copy in an installed package).
        config: config file name(s) in the bundle's ``configs/``, e.g. ``["train.json", "evaluate.json"]``.
        workflow_type: passed to ``ConfigWorkflow``.
        logging: apply the bundle's ``logging.conf`` (off by default when called from Python).
        override: config overrides, e.g. ``max_epochs=2``, ``datalist="A1.json"``.

    Returns:
        the finalised workflow (its parser still holds the resolved components).
    """
    d = bundle_dir(name)
    configs = [config] if isinstance(config, str) else list(config)
    files = [str(d / "configs" / c) for c in configs]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"bundle {name}: config file(s) not found: {missing}")
    wf = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(d / "configs" / "metadata.json"),
        logging_file=str(d / "configs" / "logging.conf") if logging else False,
        workflow_type=workflow_type,
        **override,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf
