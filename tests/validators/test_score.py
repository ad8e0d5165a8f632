import math

import pandas as pd
import pytest
import torch

from monai_uda.networks import UDAUNet
from monai_uda.validators import VALIDATORS, register_validator, score_candidates, select, source_label_statistics
from toy_networks import AllBackground, Threshold


def _images():
    images = []
    for r, c in [(2, 2), (5, 6), (8, 3)]:
        x = torch.zeros(1, 16, 16)
        x[:, r:r + 5, c:c + 5] = 1.0
        images.append(x)
    return images


def _statistics():
    return source_label_statistics([(x > 0.5).long() for x in _images()])  # stand-in source labels


def test_one_row_per_candidate_one_column_per_validator_and_timings():
    candidates = {"background": AllBackground(), "source": Threshold(), "copy": Threshold()}
    df = score_candidates(candidates, _images(), source_statistics=_statistics(), progress=False)
    assert list(df.index) == ["source", "background", "copy"]  # the source first
    assert list(df.columns) == ["entropy", "im", "source_agreement", "consensus", "mixval", "foreground_fraction",
                                "component_sizes", "inference_seconds", "validator_seconds"]
    assert df.loc["copy", "source_agreement"] == df.loc["source", "source_agreement"] == 1.0
    assert df.loc["background", "source_agreement"] == 0.0
    assert df.loc["copy", "consensus"] == 1.0 and df.loc["background", "consensus"] == 0.0  # 2 of 3 vote foreground
    for column in ("im", "mixval", "foreground_fraction", "component_sizes"):
        assert df.loc["background", column] < df.loc["source", column], column
    assert df.loc["source", "component_sizes"] == pytest.approx(0.0, abs=1e-9)
    assert (df[["inference_seconds", "validator_seconds"]] > 0).all().all()
    assert select(df)[0] == "source"  # the copy ties with the source everywhere: keep the source


def test_network_validators_with_options_and_an_explicit_list():
    torch.manual_seed(0)
    nets = {"source": UDAUNet(features=(4,) * 6, dropout=0.3), "other": UDAUNet(features=(4,) * 6, dropout=0.3)}
    images = [torch.randn(1, 16, 16) for _ in range(2)]
    df = score_candidates(nets, images, validators=["mc_dropout", "tta"], progress=False,
                          options={"mc_dropout": {"num_samples": 2}})
    assert list(df.columns) == ["mc_dropout", "tta", "inference_seconds", "validator_seconds"]
    assert (df["mc_dropout"] < 0).all() and df["tta"].between(0, 1).all()


def test_a_plugin_gets_the_network_the_images_and_the_source_network():
    seen = {}
    try:
        @register_validator("test_score_plugin", needs={"network", "source"})
        def plugin(candidate, offset=0.0):
            seen[candidate.name] = (candidate.network, candidate.source_network, len(candidate.images))
            return float(candidate.predictions.source_probabilities is not None) + offset

        nets = {"source": Threshold(), "a": Threshold(0.3)}
        df = score_candidates(nets, _images(), validators=["test_score_plugin"], progress=False,
                              options={"test_score_plugin": {"offset": 1.0}})
    finally:
        VALIDATORS.pop("test_score_plugin", None)
    assert df["test_score_plugin"].tolist() == [2.0, 2.0]
    assert seen["a"] == (nets["a"], nets["source"], 3)


def test_missing_inputs_are_named():
    nets = {"a": Threshold(), "b": Threshold(0.3)}
    with pytest.raises(ValueError, match="'source_agreement' needs the source model: source_name 'source'"):
        score_candidates(nets, _images(), validators=["source_agreement"], progress=False)
    with pytest.raises(ValueError, match="'foreground_fraction' needs source_statistics"):
        score_candidates(nets, _images(), source_name="a", validators=["foreground_fraction"], progress=False)
    with pytest.raises(ValueError, match="'mixval' cannot score here: needs two target images"):
        score_candidates(nets, _images()[:1], validators=["mixval"], progress=False)
    with pytest.raises(ValueError, match="unknown validator 'dev'"):
        score_candidates(nets, _images(), validators=["dev"], progress=False)
    with pytest.raises(ValueError, match=r"candidates\['b'\] is a str"):
        score_candidates({"a": Threshold(), "b": "model.pt"}, _images(), progress=False)
    with pytest.raises(ValueError, match="options for validators not run"):
        score_candidates(nets, _images(), validators=["entropy"], options={"tta": {}}, progress=False)
    df = score_candidates(nets, _images(), progress=False)  # no source, no statistics: the defaults that apply
    assert list(df.columns)[:4] == ["entropy", "im", "consensus", "mixval"] and not df.isna().any().any()
    assert all(math.isfinite(v) for v in df["im"])
    assert isinstance(df, pd.DataFrame)


def test_why_unavailable_reads_each_validators_needs_and_drives_the_defaults():
    from monai_uda.validators.score import CHEAP_VALIDATORS, default_validators, why_unavailable

    assert why_unavailable("source_agreement", 3, 4, has_source=False, has_statistics=True) == "no source model"
    assert why_unavailable("foreground_fraction", 3, 4, True, has_statistics=False) == "no source label statistics"
    assert why_unavailable("consensus", 1, 4, True, True) == "compares candidates: needs at least two"
    assert why_unavailable("mixval", 3, 1, True, True) == "needs two target images"
    assert why_unavailable("entropy", 1, 1, False, False) is None
    assert default_validators(3, 4, True, True) == list(CHEAP_VALIDATORS)
    assert default_validators(1, 1, False, False) == ["entropy", "im"]
