"""Find the bundles: ``$MONAI_UDA_BUNDLES``, the repository's ``bundles/`` folder, or the copy in the package.

A checkout (editable install) uses its ``bundles/`` folder, so edits to the configs take effect at once.
A regular ``pip install`` has no repository beside the package; its build copies ``bundles/`` (without
``models/``, ``eval/`` and ``demo_data/``) into the package as ``monai_uda/_bundles`` (see ``setup.py``),
and that copy is used.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["bundles_root", "bundle_dir", "locate_bundle_root", "packaged_bundles_root", "BUNDLES_ENV"]

BUNDLES_ENV = "MONAI_UDA_BUNDLES"
_PACKAGE = Path(__file__).resolve().parents[1]  # the monai_uda package folder


def packaged_bundles_root() -> Path:
    """Where a non-editable install keeps its copy of the bundles (``monai_uda/_bundles``)."""
    return _PACKAGE / "_bundles"


def _repository_bundles() -> Path:
    return _PACKAGE.parent / "bundles"


def bundles_root() -> Path:
    """The folder holding the bundles, first found of:

    1. ``$MONAI_UDA_BUNDLES``;
    2. the ``bundles/`` folder of the repository the package is imported from (checkout, editable install);
    3. the copy shipped in the package (``monai_uda/_bundles``, a regular ``pip install``).

    When none exists, the repository's path is returned (so error messages name the expected place).
    """
    env = os.environ.get(BUNDLES_ENV)
    if env:
        return Path(env)
    repo = _repository_bundles()
    if repo.is_dir():
        return repo
    packaged = packaged_bundles_root()
    return packaged if packaged.is_dir() else repo


def bundle_dir(name: str) -> Path:
    """The folder of bundle ``name``; raises ``FileNotFoundError`` naming where it looked."""
    d = bundles_root() / name
    if not (d / "configs").is_dir():
        raise FileNotFoundError(f"bundle {name!r} not found: no {d / 'configs'} (set {BUNDLES_ENV})")
    return d


def locate_bundle_root(name: str) -> str:
    """``bundle_root`` for a config: where the bundle's ``models/``, ``eval/`` and ``demo_data/`` go.

    Bundle configs use ``"bundle_root": "$monai_uda.bundle.locate_bundle_root('<name>')"`` so that
    ``python -m monai.bundle run --config_file bundles/<name>/configs/train.json`` works from the
    repository root; ``--bundle_root`` overrides it (MONAI Label does).

    Returns:
        the bundle's folder; for the copy inside an installed package (which must stay read-only and is
        removed by ``pip uninstall``) ``<working directory>/<name>`` instead; the working directory when
        the bundle cannot be found.
    """
    try:
        d = bundle_dir(name)
    except FileNotFoundError:
        return os.getcwd()
    if d.resolve().parent == packaged_bundles_root().resolve():
        return os.path.join(os.getcwd(), name)
    return str(d)
