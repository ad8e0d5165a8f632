"""Build: the package plus, as package data, the repository's ``bundles/`` and ``data_manifests/``.

The bundles and manifests stay at the top of the repository (the project layout and every command refer
to ``bundles/<name>/configs/...``). A regular (non-editable) build copies them into the built package as
``monai_uda/_bundles`` and ``monai_uda/_data_manifests``; ``monai_uda.bundle.locate.bundles_root`` and
``monai_uda.data.external.manifests_dir`` use the repository's folders when they exist (checkout,
editable install) and these copies otherwise. Run outputs that may lie in a checkout's bundle folders
(``models/``, ``eval/``, ``demo_data/``) and caches are left out. A source tree without the folders
(e.g. only ``monai_uda/`` and the setup files copied elsewhere) builds a package without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# repository folder -> folder inside the built monai_uda package
PACKAGE_DATA_DIRS = {"bundles": "_bundles", "data_manifests": "_data_manifests"}
EXCLUDED = {"models", "eval", "demo_data", "__pycache__", ".ipynb_checkpoints", "mlruns", "runs"}
EXCLUDED_SUFFIXES = (".pyc", ".pt", ".ts", ".tmp")


def _ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in EXCLUDED or n.endswith(EXCLUDED_SUFFIXES) or n.startswith(".")}


class BuildPyWithBundles(build_py):
    """``build_py`` that also copies the bundles and data manifests into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the repository's folders directly
            return
        for src_name, dst_name in PACKAGE_DATA_DIRS.items():
            src = HERE / src_name
            if not src.is_dir():
                self.warn(f"{src} not found: the package is built without {dst_name}")
                continue
            dst = Path(self.build_lib) / "monai_uda" / dst_name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=_ignore)
            self.announce(f"copied {src} -> {dst}", level=2)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if getattr(self, "editable_mode", False):
            return outputs
        for dst_name in PACKAGE_DATA_DIRS.values():
            dst = Path(self.build_lib) / "monai_uda" / dst_name
            if dst.is_dir():
                outputs += [str(p) for p in dst.rglob("*") if p.is_file()]
        return outputs


setup(cmdclass={"build_py": BuildPyWithBundles})
