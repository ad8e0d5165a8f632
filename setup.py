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


#: written next to the package in site-packages: one-line errors for ``python -m monai.bundle`` from start-up
PTH_NAME = "monai_uda_bundle_errors.pth"


def _pth_line() -> str:
    import ast

    tree = ast.parse((HERE / "monai_uda" / "bundle" / "startup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PTH_LINE":
            return ast.literal_eval(node.value)
    raise RuntimeError("monai_uda/bundle/startup.py has no PTH_LINE")


class BuildPyWithBundles(build_py):
    """``build_py`` that also copies the bundles and data manifests into the built package, and writes
    :data:`PTH_NAME` at the top of the build (site-packages once installed, editable installs included)."""

    def run(self) -> None:
        super().run()
        Path(self.build_lib).mkdir(parents=True, exist_ok=True)
        (Path(self.build_lib) / PTH_NAME).write_text(_pth_line())
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
        outputs = list(super().get_outputs(include_bytecode)) + [str(Path(self.build_lib) / PTH_NAME)]
        if getattr(self, "editable_mode", False):
            return outputs
        for dst_name in PACKAGE_DATA_DIRS.values():
            dst = Path(self.build_lib) / "monai_uda" / dst_name
            if dst.is_dir():
                outputs += [str(p) for p in dst.rglob("*") if p.is_file()]
        return outputs


try:  # editable installs (pip install -e): setuptools' editable wheel gets the .pth too
    from setuptools.command.editable_wheel import editable_wheel

    class _WithPth:
        """An editable strategy that also writes :data:`PTH_NAME` into the wheel."""

        def __init__(self, strategy):
            self.strategy = strategy

        def __enter__(self):
            self.strategy.__enter__()
            return self

        def __exit__(self, *exc):
            return self.strategy.__exit__(*exc)

        def __call__(self, wheel, *args, **kwargs):
            self.strategy(wheel, *args, **kwargs)
            try:
                wheel.writestr(PTH_NAME, _pth_line().encode())
            except Exception as e:  # never fail an install for the start-up hook
                print(f"monai_uda: {PTH_NAME} not installed ({e}); bundle config errors keep MONAI's traceback")

    class EditableWheelWithHook(editable_wheel):
        """``editable_wheel`` whose wheel also carries :data:`PTH_NAME` (its strategy writes only the finder).
        ``_select_strategy`` is setuptools' internal hook: if it is missing or changes, the install goes on
        without the line."""

        def _select_strategy(self, *args, **kwargs):
            strategy = super()._select_strategy(*args, **kwargs)
            return _WithPth(strategy) if hasattr(strategy, "__enter__") else strategy

    EDITABLE = {"editable_wheel": EditableWheelWithHook} if hasattr(editable_wheel, "_select_strategy") else {}
except ImportError:  # an old setuptools without PEP 660 editable wheels
    EDITABLE = {}


setup(cmdclass={"build_py": BuildPyWithBundles, **EDITABLE})
