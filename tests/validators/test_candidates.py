"""Candidates from a benchmark folder or a list of checkpoints; target images and source-label statistics from a
datalist, without opening a target label."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from monai_uda.networks import UDAUNet
from monai_uda.validators.candidates import (SKIP_METHODS, CandidateError, bench_candidates, checkpoint_candidates,
                                             default_inferer, load_weights, source_statistics, target_images)

TINY = dict(features=(4,) * 6)


def tiny(classes: int = 2) -> torch.nn.Module:
    return UDAUNet(2, 1, classes, **TINY)


def save(path, seed: int, classes: int = 2, wrap: str | None = None) -> dict:
    torch.manual_seed(seed)
    state = tiny(classes).state_dict()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({wrap: state} if wrap else state, path)
    return state


def same(network: torch.nn.Module, state: dict) -> bool:
    return all(torch.equal(v, state[k]) for k, v in network.state_dict().items())


@pytest.fixture
def bench(tmp_path):
    """A benchmark folder as `monai-uda benchmark` leaves it (tiny networks; seed 0 and a partial seed 1)."""
    rows = [(m, 0) for m in ("source", "oracle", "bn", "st", "rf", "past", "buda", "cbst")] + [("source", 1), ("bn", 1)]
    pd.DataFrame(rows, columns=["method", "seed"]).assign(dice=0.5).to_csv(tmp_path / "results.csv", index=False)
    s0 = tmp_path / "seed0"
    states = {"source": save(s0 / "source" / "model.pt", 0), "oracle": save(s0 / "oracle" / "model.pt", 1),
              "bn": save(s0 / "bn" / "model.pt", 2, wrap="model"),
              "st": save(s0 / "st" / "model.pt", 3), "st_round": save(s0 / "st" / "round_0" / "model.pt", 4),
              "past_before": save(s0 / "past" / "model.pt", 5),
              "past": save(s0 / "past" / "self_train" / "model.pt", 6),
              "buda": save(s0 / "buda" / "model.pt", 7, classes=3)}
    # the summary names the evaluated checkpoint by the absolute path of the machine that ran it
    (s0 / "st" / "adapt_summary.json").write_text(json.dumps({"checkpoint": "/elsewhere/seed0/st/model.pt"}))
    save(tmp_path / "seed1" / "source" / "model.pt", 8)
    save(tmp_path / "seed1" / "bn" / "model.pt", 9)
    return tmp_path, states


def test_a_benchmark_seed_gives_its_unet_models_and_says_what_it_skipped(bench):
    folder, states = bench
    found = bench_candidates(folder, tiny)
    assert list(found.networks) == ["source", "bn", "st", "past"]  # the source first, then the rows' order
    for name in ("source", "bn", "st", "past"):
        assert same(found.networks[name], states[name]), name
    assert found.checkpoints["past"].endswith(os.path.join("past", "self_train", "model.pt"))  # not the pre-ST model
    assert found.checkpoints["st"] == str(folder / "seed0" / "st" / "model.pt")
    assert set(found.skipped) == {"oracle", "rf", "buda", "cbst"}
    assert found.skipped["oracle"] == SKIP_METHODS["oracle"] and "target labels" in found.skipped["oracle"]
    assert "network_def" in found.skipped["rf"]
    assert str(folder / "seed0" / "buda" / "model.pt") in found.skipped["buda"]  # 3 classes: does not fit
    assert "no checkpoint" in found.skipped["cbst"]
    msg = found.skipped_message()
    assert msg.startswith("skipped 4: oracle (") and "\n" not in msg
    assert found.description.endswith("seed 0 of 0, 1")


def test_another_seed_a_method_filter_and_bad_folders(bench, tmp_path_factory):
    folder, states = bench
    found = bench_candidates(folder, tiny, seed=1)
    assert list(found.networks) == ["source", "bn"] and not found.skipped
    assert list(bench_candidates(folder, tiny, methods=["bn"]).networks) == ["source", "bn"]
    with pytest.raises(ValueError, match=r"no rows of seed 5; its seeds: 0, 1"):
        bench_candidates(folder, tiny, seed=5)
    with pytest.raises(ValueError, match="no rows of method"):
        bench_candidates(folder, tiny, methods=["nope"])
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match=f"{empty}.results.csv not found"):
        bench_candidates(empty, tiny)
    os.remove(folder / "seed0" / "source" / "model.pt")
    with pytest.raises(FileNotFoundError, match="no source model in .*seed0.source"):
        bench_candidates(folder, tiny)


def test_a_list_of_checkpoints_is_named_by_the_shortest_unique_end_of_each_path(tmp_path):
    src = save(tmp_path / "run" / "source.pt", 0)
    e1 = save(tmp_path / "run" / "epoch=1.pt", 1)
    a = save(tmp_path / "a" / "model.pt", 2)
    b = save(tmp_path / "b" / "model.pt", 3, wrap="state_dict")
    files = [tmp_path / "run" / "epoch=1.pt", tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt",
             tmp_path / "run" / "source.pt"]
    found = checkpoint_candidates(files, tmp_path / "run" / "source.pt", tiny)
    assert list(found.networks) == ["source", "epoch=1", "a/model", "b/model"]
    assert found.skipped == {"run/source": "the same file as 'source'"}  # not "source": that name is the reference's
    for name, state in (("source", src), ("epoch=1", e1), ("a/model", a), ("b/model", b)):
        assert same(found.networks[name], state), name
    named = checkpoint_candidates(files[:2], tmp_path / "run" / "source.pt", tiny, names=["one", "two"])
    assert list(named.networks) == ["source", "one", "two"]


def test_bad_checkpoints_are_one_line_naming_the_file(tmp_path):
    good = tmp_path / "good.pt"
    save(good, 0)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    other = tmp_path / "three_classes.pt"
    save(other, 1, classes=3)
    for bad, error in ((garbage, "is not a PyTorch state dict"), (other, "does not fit UDAUNet")):
        with pytest.raises(CandidateError) as e:
            checkpoint_candidates([bad], good, tiny)
        assert str(bad) in str(e.value) and error in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pt"):
        checkpoint_candidates([tmp_path / "missing.pt"], good, tiny)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CandidateError, match="holds no state dict"):
        load_weights(tiny(), tmp_path / "list.pt")
    with pytest.raises(ValueError, match="reference"):
        checkpoint_candidates([good], good, tiny, names=["source"])


def test_target_images_and_source_statistics_never_open_a_target_label(tiny_demo_2d, no_target_labels):
    opened, targets = no_target_labels  # tests/conftest.py: every reader refuses a target label
    dl = json.load(open(tiny_demo_2d))
    base = os.path.dirname(tiny_demo_2d)
    images = target_images(tiny_demo_2d)
    assert len(images) == len(dl["target_training"]) == 3
    assert all(x.shape == (1, 80, 96) and x.dtype == torch.float32 for x in images)
    assert all(abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2 for x in images)  # z-scored
    assert len(target_images(tiny_demo_2d, limit=2)) == 2
    assert set(opened) == targets

    opened.clear()
    stats = source_statistics(tiny_demo_2d, limit=2)
    source_labels = [os.path.normpath(os.path.join(base, it["label"])) for it in dl["source_training"][:2]]
    assert set(source_labels) <= set(opened) and len(opened) == 4  # 2 images, 2 labels, each read once
    assert stats.num_classes == 2 and 0.05 < float(stats.class_fractions[0]) < 0.5  # white matter
    assert len(stats.log_component_sizes[0]) > 0


def test_default_inferer_is_the_bundles_sliding_window():
    assert list(default_inferer(2).roi_size) == [128, 128] and list(default_inferer(3).roi_size) == [64, 64, 64]
    assert list(default_inferer(2, [96]).roi_size) == [96, 96] and default_inferer(2).overlap == 0.25
