"""Run a bundle config from Python with overrides (what the benchmark and the tests use)."""

from __future__ import annotations

import logging as _logging
import os
from typing import Any, Sequence

from monai.bundle import ConfigWorkflow

from monai_uda.utils import user_error

from .locate import bundle_dir
from .startup import in_bundle_cli, install

__all__ = ["run_bundle", "install_one_line_errors"]

def install_one_line_errors() -> None:
    """Make ``python -m monai.bundle run`` print a user error as one line (``MONAI_UDA_DEBUG=1``: the traceback).

    Called when a bundle config imports ``monai_uda.bundle`` inside MONAI's bundle command line (and, before
    any config is read, by the start-up hook of :mod:`monai_uda.bundle.startup`); other programs keep their
    exception hook.
    """
    install()


if in_bundle_cli():  # also where the start-up line of the package is not installed (a source checkout)
    install_one_line_errors()


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
    try:
        wf.initialize()
        wf.run()
        wf.finalize()
    except RuntimeError as e:  # MONAI wraps errors of config expressions: hand the user's error on as it is
        cause = user_error(e)
        if cause is None or cause is e:
            raise
        raise cause from None
    return wf
