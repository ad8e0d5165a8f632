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
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_records_both_models_and_the_verdict_without_opening_a_target_label(
        tiny_demo_2d, demo_models, no_target_labels, adapted, capsys, one_thread):
    uda = UDAData(tiny_demo_2d, deep=False)
    opened, target_images = no_target_labels
    broken, net = adapted(demo_models["broken"]), UDAUNet(2, 1, 2)
    before = _random_state()
    path = record_validator_scores(broken, net, uda, source_checkpoint=demo_models["good"])
    after = _random_state()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert path == validator_scores_path(broken) == broken[: -len(".pt")] + ".validators.json"
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # a normal file mode, not the temp file's
    rec = json.load(open(path))
    assert rec["checkpoint"] == os.path.abspath(broken) and rec["source_checkpoint"] == demo_models["good"]
    assert list(rec["scores"]) == ["source", "adapted"] and rec["validators"] == list(DEFAULT_RECORD_VALIDATORS)
    assert all(name in rec["scores"]["adapted"] for name in DEFAULT_RECORD_VALIDATORS)
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


def test_a_checkpoint_of_another_architecture_is_named(tiny_demo_2d, demo_models, tmp_path):
    other = tmp_path / "other.pt"
    torch.save(UDAUNet(2, 1, 3).state_dict(), other)
    with pytest.raises(CheckpointError, match=f"{other} does not fit UDAUNet"):
        record_validator_scores(str(other), UDAUNet(2, 1, 2), UDAData(tiny_demo_2d, deep=False))
