import ast
from pathlib import Path

import pytest

import monai_uda.validators as validators
from monai_uda.validators.registry import VALIDATORS, get_validator, register_validator, validator_needs

PACKAGE = Path(validators.__file__).parent


def test_every_family_registers_its_validators_with_what_they_need():
    assert {"entropy", "im", "source_agreement", "consensus", "tta", "mc_dropout", "foreground_fraction",
            "component_sizes", "mixval"} <= set(VALIDATORS)
    assert validator_needs("entropy") == frozenset()
    assert validator_needs("source_agreement") == {"source"}
    assert validator_needs("consensus") == {"others"}
    assert validator_needs("mixval") == {"network", "image_pairs"}
    assert validator_needs("component_sizes") == {"source_statistics"}


def test_an_unknown_name_is_refused_in_one_line_naming_the_known_ones():
    with pytest.raises(ValueError) as e:
        get_validator("no_such_validator")  # not "w2_shift": a method package registers that one once imported
    msg = str(e.value)
    assert "'no_such_validator'" in msg and "entropy" in msg and "mixval" in msg and "\n" not in msg


def test_a_plugin_registers_and_a_second_function_cannot_take_its_name():
    try:
        @register_validator("test_plugin", needs={"network"})
        def plugin(candidate):
            return 1.0

        assert get_validator("test_plugin") is plugin and validator_needs("test_plugin") == {"network"}

        def other(candidate):
            return 0.0

        with pytest.raises(ValueError, match="already registered"):
            register_validator("test_plugin")(other)
    finally:
        VALIDATORS.pop("test_plugin", None)
    with pytest.raises(ValueError, match="unknown"):
        register_validator("test_bad_needs", needs={"labels"})


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_package_is_generic_and_the_registry_imports_nothing_of_the_package():
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 10
    for f in files:
        assert not any(m.startswith("monai_uda.methods") for m in _imports(f)), f.name
    assert not any(m.startswith(".") or m.startswith("monai_uda") for m in _imports(PACKAGE / "registry.py"))
