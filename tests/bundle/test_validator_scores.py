"""``record_validator_scores``: what the validators predict of an adapted checkpoint, recorded beside it, without a
target label (the checkpoints of ``demo_models`` in tests/conftest.py: good, broken, zero)."""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
import torch

from monai_uda.bundle import record_validator_scores, validator_scores_path
from monai_uda.bundle.stages import CheckpointError
from monai_uda.bundle.validator_scores import DEFAULT_RECORD_VALIDATORS
from monai_uda.data import UDAData
from monai_uda.networks import UDAUNet


@pytest.fixture
def adapted(tmp_path):
    """``adapted(name)``: the demo model ``name`` copied to ``<tmp>/<name>/model.pt``, as a bundle holds it."""

    def put(path: str) -> str:
        out = tmp_path / os.path.splitext(os.path.basename(path))[0] / "model.pt"
        out.parent.mkdir()
        shutil.copyfile(path, out)
        return str(out)

    return put


def _random_state():
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return torch.get_rng_state(), (kind, keys.copy(), pos, has_gauss, gauss), random.getstate()


def test_records_both_models_and_the_verdict_without_opening_a_target_label(
        tiny_demo_2d, demo_models, no_target_labels, adapted, capsys, one_thread):
    uda = UDAData(tiny_demo_2d, deep=False)
    opened, target_images = no_target_labels
    broken, net = adapted(demo_models["broken"]), UDAUNet(2, 1, 2)
    before = _random_state()
    path = record_validator_scores(broken, net, uda, source_checkpoint=demo_models["good"])
    after = _random_state()
    assert torch.equal(before[0], after[0]) and before[2] == after[2]
    assert np.array_equal(before[1][1], after[1][1]) and before[1][2:] == after[1][2:]
    assert path == validator_scores_path(broken) == broken[: -len(".pt")] + ".validators.json"
    rec = json.load(open(path))
    assert rec["checkpoint"] == os.path.abspath(broken) and rec["source_checkpoint"] == demo_models["good"]
    assert list(rec["scores"]) == ["source", "adapted"] and rec["validators"] == list(DEFAULT_RECORD_VALIDATORS)
    assert list(rec["scores"]["adapted"]) == list(DEFAULT_RECORD_VALIDATORS)  # timings apart, under "seconds"
    assert set(rec["seconds"]["adapted"]) == {"inference_seconds", "validator_seconds"}
    assert rec["scores"]["source"]["source_agreement"] == pytest.approx(1.0)  # the source agrees with itself
    assert rec["predicted"] == "source" and rec["reason"].startswith("keep the source model")
    assert target_images <= set(opened)  # it read the target images (and, by the guard, never a target label)
    line = [ln for ln in capsys.readouterr().out.splitlines() if "validator scores of" in ln]
    assert len(line) == 1 and path in line[0] and "keep the source model" in line[0]

    good = adapted(demo_models["good"])  # the other way round: the adaptation is predicted to help
    rec = json.load(open(record_validator_scores(good, UDAUNet(2, 1, 2), uda, demo_models["broken"])))
    assert rec["predicted"] == "adapted" and "'adapted' has the best mean rank" in rec["reason"]


def test_without_a_source_model_or_validators(tiny_demo_2d, demo_models, adapted, one_thread):
    uda = UDAData(tiny_demo_2d, deep=False)
    good = adapted(demo_models["good"])
    assert record_validator_scores(good, UDAUNet(2, 1, 2), uda, validators=[]) is None  # recording turned off
    assert not os.path.exists(validator_scores_path(good))
    rec = json.load(open(record_validator_scores(good, UDAUNet(2, 1, 2), uda, source_checkpoint=None,
                                                 validators=["entropy", "source_agreement", "consensus"])))
    assert list(rec["scores"]) == ["adapted"] and rec["validators"] == ["entropy"]
    assert rec["left_out"] == {"source_agreement": "no source model",
                               "consensus": "compares many candidates (monai-uda select)"}
    assert rec["predicted"] is None and rec["source_checkpoint"] is None


def test_errors_name_the_file_or_key_and_do_not_fail_the_run_unless_strict(tiny_demo_2d, demo_models, adapted,
                                                                             tmp_path, capsys, one_thread):
    uda = UDAData(tiny_demo_2d, deep=False)
    other = tmp_path / "other.pt"
    torch.save(UDAUNet(2, 1, 3).state_dict(), other)
    with pytest.raises(CheckpointError, match=f"{other} does not fit UDAUNet"):
        record_validator_scores(str(other), UDAUNet(2, 1, 2), uda, strict=True)
    with pytest.raises(ValueError, match="record_validators: unknown validator 'entrpy'; known: .*entropy"):
        record_validator_scores(demo_models["good"], UDAUNet(2, 1, 2), uda, validators=["entrpy"], strict=True)
    # in a bundle run the model is saved before the record: an error is one printed line, and the run ends well
    assert record_validator_scores(str(other), UDAUNet(2, 1, 2), uda) is None
    said = capsys.readouterr().out.strip().splitlines()
    assert said[-1].startswith(f"validator scores of {other} not recorded (the adapted model is saved): {other} does")
    assert not os.path.exists(validator_scores_path(other))

    zero = adapted(demo_models["zero"])  # predicts one class everywhere: component_sizes is -inf, written as null
    path = record_validator_scores(zero, UDAUNet(2, 1, 2), uda, str(tmp_path / "no_source.pt"),
                                   validators="entropy, component_sizes,source_agreement")  # a string, as from a CLI
    text = open(path).read()
    assert "Infinity" not in text and "NaN" not in text
    rec = json.loads(text)
    assert rec["validators"] == ["entropy", "component_sizes"] and rec["scores"]["adapted"]["component_sizes"] is None
    assert rec["source_missing"] == str(tmp_path / "no_source.pt") and rec["source_checkpoint"] is None
    assert rec["left_out"] == {"source_agreement": f"source model not found: {tmp_path / 'no_source.pt'}"}
