"""Find the ``bundles/`` folder of the repository (or ``$MONAI_UDA_BUNDLES``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["bundles_root", "bundle_dir", "locate_bundle_root"]


def bundles_root() -> Path:
    """``$MONAI_UDA_BUNDLES`` if set, else the ``bundles/`` folder next to the ``monai_uda`` package."""
    env = os.environ.get("MONAI_UDA_BUNDLES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bundles"


def bundle_dir(name: str) -> Path:
    """The folder of bundle ``name``; raises ``FileNotFoundError`` naming where it looked."""
    d = bundles_root() / name
    if not (d / "configs").is_dir():
        raise FileNotFoundError(f"bundle {name!r} not found: no {d / 'configs'} (set MONAI_UDA_BUNDLES)")
    return d


def locate_bundle_root(name: str) -> str:
    """``bundle_root`` for a config: the bundle's folder, or the working directory if it cannot be found.

    Bundle configs use ``"bundle_root": "$monai_uda.bundle.locate_bundle_root('<name>')"`` so that
    ``python -m monai.bundle run --config_file bundles/<name>/configs/train.json`` works from the
    repository root; ``--bundle_root`` overrides it (MONAI Label does).
    """
    try:
        return str(bundle_dir(name))
    except FileNotFoundError:
        return os.getcwd()
