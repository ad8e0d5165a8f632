"""The real pairs A1, B2, C1, D1 (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json
import os

import pytest

from monai_uda.data import DatalistError, build_pair_datalist

pytestmark = pytest.mark.realdata


@pytest.mark.parametrize("pair,dims", [("A1", 2), ("B2", 2), ("C1", 2), ("D1", 3)])
def test_pair_datalists(shared_data, tmp_path, pair, dims):
    out = tmp_path / f"{pair}.json"
    dl = build_pair_datalist(pair, shared_data, out=out)
    assert json.load(open(out))["name"] == pair
    assert dl["spatial_dims"] == dims
    assert all("label" not in it for it in dl["target_training"])
    tr = {it["image"] for it in dl["target_training"]}
    te = {it["image"] for it in dl["target_test"]}
    src = {it["image"] for it in dl["source_training"] + dl["source_validation"]}
    assert not (src & (tr | te)), "source and target images overlap"
    if dl["setting"] == "inductive":
        assert not (tr & te), "adaptation images leak into the test set"
    else:
        assert tr == te
    # the oracle never trains on, nor selects its checkpoint on, the test images
    otr = {it["image"] for it in dl["oracle_training"]}
    oval = {it["image"] for it in dl["oracle_validation"]}
    assert not (otr & te) and not (oval & te)
    assert oval and not (otr & oval), "the oracle's validation images must be held out of its training"


def test_unknown_pair_and_missing_root(tmp_path):
    with pytest.raises(DatalistError, match="unknown pair"):
        build_pair_datalist("Z9", tmp_path)
    with pytest.raises(DatalistError, match="folder not found"):
        build_pair_datalist("A1", tmp_path / "nowhere")


def test_failed_build_does_not_touch_existing_output(tmp_path):
    out = tmp_path / "A1.json"
    out.write_text("keep me")
    with pytest.raises(DatalistError):
        build_pair_datalist("A1", tmp_path / "nowhere", out=out)
    assert out.read_text() == "keep me"
    assert os.listdir(tmp_path) == ["A1.json"]
