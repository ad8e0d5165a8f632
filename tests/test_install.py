"""A regular (non-editable) ``pip install`` ships the bundles and data manifests and runs a bundle by itself.

The repository's sources are copied to a temp folder (so the in-tree build leaves no ``build/`` or
``*.egg-info`` in the checkout) and installed with ``pip install --no-deps --no-build-isolation --no-index``
into a fresh venv that sees the system site-packages (torch, MONAI, ... are not reinstalled; nothing is
downloaded). From a folder outside the repository, the installed package must be the one imported, find its
packaged copy of ``source_segmentation`` and the manifests, and ``python -m monai.bundle run`` of that
bundle's ``train.json`` on the tiny demo pair must write ``model.pt`` under ``<working dir>/source_segmentation``
(never into site-packages).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_SKIP = {".git", "build", "dist", "results", "runs", "mlruns", "notebooks", "docs", "tests", "scripts"}
BUNDLE_SKIP = {"models", "eval", "demo_data"}
TINY = ["--max_epochs", "1", "--epoch_length", "1", "--batch_size", "1", "--num_samples", "1",
        "--roi_size", "[32, 32]", "--validate_during_training", "False"]

PROBE = """
import json, monai_uda
from monai_uda.bundle.locate import bundle_dir, packaged_bundles_root
from monai_uda.data.external import list_manifests, manifests_dir, schema_path
from monai_uda.data.pairs import PAIRS
print(json.dumps({"module": monai_uda.__file__, "bundle": str(bundle_dir("source_segmentation")),
                  "packaged": str(packaged_bundles_root()), "manifests": str(manifests_dir()),
                  "names": list_manifests(), "schema": schema_path().is_file(), "pairs": len(PAIRS)}))
"""


def _copy_sources(dst: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        skip = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", ".pyc", ".pt"))}
        if here == REPO:
            skip |= {n for n in names if n in TOP_LEVEL_SKIP or n.startswith(".")}
        if here.parent == REPO / "bundles":
            skip |= {n for n in names if n in BUNDLE_SKIP}
        return skip

    shutil.copytree(REPO, dst, ignore=ignore)


def _clean_env(**extra: str) -> dict[str, str]:
    drop = ("PYTHONPATH", "MONAI_UDA_BUNDLES", "MONAI_UDA_MANIFESTS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", **extra)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd[:4]} failed:\n{(r.stdout + r.stderr)[-4000:]}"
    return r.stdout


def test_regular_install_runs_a_packaged_bundle(tmp_path, tiny_demo_2d):
    src, env_dir, work = tmp_path / "src", tmp_path / "venv", tmp_path / "work"
    _copy_sources(src)
    # pip itself comes from the system site-packages the venv sees
    venv.create(env_dir, system_site_packages=True, with_pip=False, symlinks=os.name != "nt")
    py = str(env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    env = _clean_env()
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(src)],
         cwd=tmp_path, env=env, timeout=300)
    work.mkdir()

    info = json.loads(_run([py, "-c", PROBE], cwd=work, env=env, timeout=120).strip().splitlines()[-1])
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work, env=env,
                     timeout=60).strip()).resolve()
    module = Path(info["module"]).resolve()
    assert site in module.parents and REPO not in module.parents, info["module"]
    bundle = Path(info["bundle"])
    assert bundle.parent == Path(info["packaged"]) and site in bundle.resolve().parents, info
    assert {"train.json", "evaluate.json", "inference.json", "metadata.json", "logging.conf"} <= {
        p.name for p in (bundle / "configs").iterdir()}
    assert not any((bundle / d).exists() for d in BUNDLE_SKIP)  # run outputs of the checkout are not shipped
    assert site in Path(info["manifests"]).resolve().parents and "cc359" in info["names"]
    assert info["schema"] and info["pairs"] > 0
    # the start-up line that gives `python -m monai.bundle run` one-line errors before any config is read
    assert (site / "monai_uda_bundle_errors.pth").is_file()

    cmd = [py, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"),
           "--datalist", tiny_demo_2d, *TINY]
    _run(cmd, cwd=work, env=_clean_env(OMP_NUM_THREADS="1"), timeout=300)
    assert (work / "source_segmentation" / "models" / "model.pt").is_file()  # <working dir>/<bundle name>
    assert not (bundle / "models").exists()  # nothing written into site-packages


def test_bundle_lookup_order_and_bundle_root_of_a_packaged_bundle(tmp_path, monkeypatch):
    """``$MONAI_UDA_BUNDLES``, then the repository's ``bundles/``, then ``monai_uda/_bundles``; a packaged bundle's
    outputs go to ``<working dir>/<name>``, a checkout's into its own folder."""
    from monai_uda.bundle import locate

    monkeypatch.delenv(locate.BUNDLES_ENV, raising=False)
    package = tmp_path / "site" / "monai_uda"
    monkeypatch.setattr(locate, "_PACKAGE", package)
    (package / "_bundles" / "demo" / "configs").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert locate.bundles_root() == package / "_bundles"
    assert locate.locate_bundle_root("demo") == str(work / "demo")
    assert locate.locate_bundle_root("missing") == str(work)
    (tmp_path / "site" / "bundles" / "demo" / "configs").mkdir(parents=True)
    assert locate.bundles_root() == tmp_path / "site" / "bundles"
    assert locate.locate_bundle_root("demo") == str(tmp_path / "site" / "bundles" / "demo")
    monkeypatch.setenv(locate.BUNDLES_ENV, str(tmp_path / "mine"))
    assert locate.bundles_root() == tmp_path / "mine"
