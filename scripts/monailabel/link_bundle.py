"""Link a monai-uda bundle into a MONAI Label ``monaibundle`` app's model folder.

Run by ``scripts/monailabel_serve.sh`` in the MONAI Label environment::

    python scripts/monailabel/link_bundle.py BUNDLE_DIR APP_DIR

MONAI Label's ``BundleInferTask`` always loads ``<bundle>/models/model.pt`` and offers every
``models/*.pt`` as a choice, whereas a bundle's ``configs/inference.json`` names the checkpoint it
deploys in its ``checkpoint`` key (``models/self_train/model.pt`` for
``pixel_alignment_segmentation``; other ``*.pt`` files such as ``head_model.pt`` or
``variance_model.pt`` are not the deployed network). So the bundle is linked as a *view*:
``APP_DIR/model/<name>/`` holds symlinks to the bundle's files, except ``models/``, which holds only
``model.pt`` -> the checkpoint ``inference.json`` resolves to. The bundle itself is not changed.

Exit status 2 with a one-line message on stderr when the bundle cannot be served.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

__all__ = ["deployed_checkpoint", "guess_checkpoint", "link_bundle", "main"]

_JOIN = re.compile(r"^\$os\.path\.join\(@bundle_root((?:\s*,\s*'[^']*')+)\s*\)$")


class BundleError(Exception):
    """The bundle cannot be served; the message says why and what to do."""


def guess_checkpoint(bundle: Path) -> Path | None:
    """The checkpoint of ``configs/inference.json`` without MONAI (a quick check before the env exists).

    Understands ``"$os.path.join(@bundle_root, 'models', ...)"`` and a missing key (``models/model.pt``).

    Args:
        bundle: the bundle folder.

    Returns:
        the path, or ``None`` when the expression is anything else (then only :func:`deployed_checkpoint` knows).
    """
    with open(bundle / "configs" / "inference.json") as f:
        expr = json.load(f).get("checkpoint")
    if expr is None:
        return bundle / "models" / "model.pt"
    m = _JOIN.match(str(expr).strip())
    if not m:
        return None
    return bundle.joinpath(*re.findall(r"'([^']*)'", m.group(1)))


def deployed_checkpoint(bundle: Path) -> Path:
    """The checkpoint a bundle's ``configs/inference.json`` loads, with ``bundle_root`` = ``bundle``.

    Args:
        bundle: the bundle folder.

    Returns:
        the absolute checkpoint path (``models/model.pt`` when the config has no ``checkpoint`` key).

    Raises:
        BundleError: when the config is missing or the checkpoint file does not exist.
    """
    cfg = bundle / "configs" / "inference.json"
    if not cfg.is_file():
        raise BundleError(f"{bundle} is not a servable bundle: {cfg} not found")
    if not (bundle / "configs" / "metadata.json").is_file():
        raise BundleError(f"{bundle} is not a servable bundle: configs/metadata.json not found")
    with open(cfg) as f:
        raw = json.load(f)
    if "checkpoint" in raw:
        from monai.bundle import ConfigParser

        parser = ConfigParser(raw)
        parser["bundle_root"] = str(bundle)
        if "imports" in raw:
            parser.get_parsed_content("imports")
        ckpt = Path(parser.get_parsed_content("checkpoint"))
    else:
        ckpt = bundle / "models" / "model.pt"
    if not ckpt.is_absolute():
        ckpt = bundle / ckpt
    if not ckpt.is_file():
        raise BundleError(
            f"bundle {bundle.name} has no trained/adapted model: {ckpt} not found "
            f"(run its train/adapt config first, e.g. python -m monai.bundle run --config_file "
            f"{bundle}/configs/<train or adapt>.json --bundle_root {bundle})"
        )
    return ckpt.resolve()


def link_bundle(bundle: Path, app_dir: Path) -> Path:
    """(Re)create ``app_dir/model/<bundle name>`` as a view of ``bundle`` serving its deployed checkpoint.

    Args:
        bundle: the bundle folder (its name is the model name MONAI Label serves).
        app_dir: the MONAI Label app folder (a copy of the ``monaibundle`` sample app).

    Returns:
        the view folder.
    """
    bundle = bundle.resolve()
    ckpt = deployed_checkpoint(bundle)
    view = app_dir / "model" / bundle.name
    if view.is_symlink() or view.is_file():
        view.unlink()
    elif view.exists():
        shutil.rmtree(view)
    (view / "models").mkdir(parents=True)
    for entry in sorted(bundle.iterdir()):
        if entry.name != "models":
            os.symlink(entry, view / entry.name)
    os.symlink(ckpt, view / "models" / "model.pt")
    return view


def main(argv: list[str] | None = None) -> int:
    """Command line: ``link_bundle.py BUNDLE_DIR APP_DIR`` (prints the view folder), or
    ``link_bundle.py --precheck BUNDLE_DIR`` (stdlib only: exit 2 if the checkpoint is visibly missing)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--precheck":
        ckpt = guess_checkpoint(Path(args[1]).resolve())
        if ckpt is not None and not ckpt.is_file():
            print(f"error: bundle {Path(args[1]).resolve().name} has no trained/adapted model: {ckpt} not found "
                  f"(train or adapt it first; see its docs/README.md)", file=sys.stderr)
            return 2
        return 0
    if len(args) != 2:
        print("usage: link_bundle.py BUNDLE_DIR APP_DIR | --precheck BUNDLE_DIR", file=sys.stderr)
        return 2
    try:
        view = link_bundle(Path(args[0]), Path(args[1]))
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"linked {view} (models/model.pt -> {os.readlink(view / 'models' / 'model.pt')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
