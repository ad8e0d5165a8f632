"""Multi-GPU (DDP) bundle configs: two gloo ranks on the CPU via the real ``torchrun -m monai.bundle run`` command.

Each ``torchrun`` start costs the imports of two processes, so only the source training and the BatchNorm
re-estimation run here (the latter compared with the single-process result); the other ``multi_gpu_*.json``
files are checked statically.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from monai_uda.bundle import bundle_dir, run_bundle

#: every training/adaptation config and the configs its multi-GPU override is layered on
MULTI_GPU = {
    "source_segmentation": {"train.json": ["train.json"], "train_oracle.json": ["train.json", "train_oracle.json"]},
    "bn_reestimation_segmentation": {"adapt.json": ["adapt.json"]},
    "early_feature_refinement_segmentation": {
        "train_head.json": ["train_head.json"], "adapt.json": ["adapt.json"],
        "adapt_oneshot.json": ["adapt.json", "adapt_oneshot.json"],
    },
    "variance_sampling_segmentation": {"adapt.json": ["adapt.json"]},
    "shallow2deep_segmentation": {
        "prepare_forests.json": ["prepare_forests.json"], "train_enhancer.json": ["train_enhancer.json"],
        "adapt.json": ["adapt.json"],
    },
    "pixel_alignment_segmentation": {
        "train_translation.json": ["train_translation.json"],
        "translate.json": ["train_translation.json", "translate.json"],
        "train.json": ["train.json"], "self_train.json": ["train.json", "self_train.json"],
    },
}
TINY = {"max_epochs": 2, "epoch_length": 2, "batch_size": 1, "num_samples": 1, "roi_size": [32, 32], "val_interval": 1}


def _config_list(layers: list[str]) -> str:
    return "[" + ",".join(f"'configs/{c}'" for c in layers) + "]"


def _torchrun(bundle: str, layers: list[str], timeout: int = 900, **overrides) -> str:
    """Run ``torchrun --nproc_per_node=2 -m monai.bundle run`` in the bundle folder; returns the prefixed log."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--tee=3",
           "-m", "monai.bundle", "run", "--config_file", _config_list(layers), "--meta_file", "configs/metadata.json"]
    for k, v in overrides.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, cwd=bundle_dir(bundle), env=env, capture_output=True, text=True, timeout=timeout)
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"torchrun exited with {r.returncode}:\n{log[-6000:]}"
    return log


def _rank_lines(log: str, rank: int) -> list[str]:
    return [line for line in log.splitlines() if re.match(rf"\[default{rank}\]:", line)]


@pytest.fixture(scope="module")
def source_ddp(tmp_path_factory, tiny_demo_2d):
    out = tmp_path_factory.mktemp("source_ddp")
    log = _torchrun("source_segmentation", ["train.json", "multi_gpu_train.json"], datalist=tiny_demo_2d,
                    bundle_root=str(out), ckpt_dir=str(out / "models"), output_dir=str(out / "eval"), **TINY)
    return out, log


def test_source_train_two_ranks(source_ddp):
    out, log = source_ddp
    for rank in (0, 1):  # both ranks trained to the end and validated (sharded validation, gathered metric)
        lines = _rank_lines(log, rank)
        assert any("SupervisedTrainer - INFO - Engine run finished" in line for line in lines), f"rank {rank}"
        assert any("Key metric: val_mean_dice" in line or "val_mean_dice" in line for line in lines), f"rank {rank}"
    # logging and checkpoint handlers on rank 0 only
    assert any("saved final checkpoint" in line for line in _rank_lines(log, 0))
    assert not any("saved final checkpoint" in line or "train_loss" in line for line in _rank_lines(log, 1))
    assert sum("train_loss" in line for line in _rank_lines(log, 0)) == TINY["max_epochs"] * TINY["epoch_length"]
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)  # the unwrapped network was saved
    assert [p.name for p in (out / "models").glob("resume_*.pt")]


def test_bn_reestimation_two_ranks_equals_single_process(source_ddp, tmp_path, tiny_demo_2d):
    out, _ = source_ddp
    src = str(out / "models" / "model.pt")
    # batch_size 1: the 3 target images are 3 batches, dealt 2 / 1 to the ranks
    # mode reset: the exact pooled statistics (Algorithm 1, the default, averages the per-rank recursions)
    ov = {"datalist": tiny_demo_2d, "bundle_root": str(tmp_path), "source_checkpoint": src, "batch_size": 1,
          "mode": "reset"}
    layers = ["adapt.json", "multi_gpu_adapt.json"]
    log = _torchrun("bn_reestimation_segmentation", layers, ckpt_dir=str(tmp_path / "ddp"), **ov)
    assert len(_rank_lines(log, 1)) > 0 and "Traceback" not in log
    assert (tmp_path / "ddp" / "model.validators.json").is_file()  # the validator record: rank 0 only
    said = [ln for ln in log.splitlines() if "validator scores of" in ln]
    assert len(said) == 1 and not _rank_lines("\n".join(said), 1), said
    run_bundle("bn_reestimation_segmentation", "adapt.json", ckpt_dir=str(tmp_path / "single"), **ov)
    ddp = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "model.pt", weights_only=True)
    source = torch.load(src, weights_only=True)
    assert ddp.keys() == single.keys()
    changed = [k for k in ddp if not torch.equal(ddp[k], source[k])]
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    for k in ddp:  # exact pooled statistics: the single-process result (float32 rounding only)
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # the override without torchrun: one plain process (no process group), same result
    run_bundle("bn_reestimation_segmentation", layers, ckpt_dir=str(tmp_path / "one"), **ov)
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    for k in one:
        torch.testing.assert_close(one[k], single[k], rtol=1e-6, atol=1e-7, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("bundle", sorted(MULTI_GPU))
def test_every_training_config_has_a_multi_gpu_override(bundle):
    d = bundle_dir(bundle)
    readme = (d / "docs" / "README.md").read_text()
    assert re.search(r"^#+ Multi-GPU", readme, re.M), f"{bundle}: docs/README.md has no Multi-GPU section"
    for config, layers in MULTI_GPU[bundle].items():
        name = f"multi_gpu_{config}"
        with open(d / "configs" / name) as f:
            cfg = json.load(f)
        launch = f"--config_file \"{_config_list(layers + [name])}\""
        assert "torchrun --nproc_per_node=N -m monai.bundle run" in cfg["_desc_"] and launch in cfg["_desc_"], name
        from_root = "[" + ",".join(f"'bundles/{bundle}/configs/{c}'" for c in layers + [name]) + "]"
        assert f'torchrun --nproc_per_node=2 -m monai.bundle run --config_file "{from_root}"' in readme, (
            f"{bundle}: docs/README.md lacks the torchrun command of {name}")
        assert cfg["initialize"][0].startswith("$monai_uda.bundle.distributed.init_distributed("), name
        assert cfg["finalize"][-1] == "$monai_uda.bundle.distributed.destroy_distributed()", name
        text = json.dumps(cfg)
        if "wrap_ddp" in text:  # trained configs: sharded data and rank-0-only handlers
            assert "DistributedSampler" in text or "shard_indices" in text, name
            assert "rank0_handlers" in text, name


def test_oracle_override_is_the_train_override():
    d = bundle_dir("source_segmentation") / "configs"
    a, b = (json.loads((d / f).read_text()) for f in ("multi_gpu_train.json", "multi_gpu_train_oracle.json"))
    a.pop("_desc_"), b.pop("_desc_")
    assert a == b


def _called(expr: str) -> str:
    """``"$monai_uda.bundle.save_network(@network, ...)"`` -> ``"monai_uda.bundle.save_network"``."""
    return expr.lstrip("$").split("(", 1)[0].strip()


@pytest.mark.parametrize("bundle,config", [(b, c) for b in sorted(MULTI_GPU) for c in MULTI_GPU[b]])
def test_override_keeps_up_with_its_base_config(bundle, config):
    """Drift guard: the override replaces some base items (``run`` lists, handler lists, ...); every step and
    every reference of the base value must still be in it, so a step added to the base config later (e.g.
    experiment tracking) is not silently dropped in multi-GPU runs."""
    from monai.bundle import ConfigParser

    d = bundle_dir(bundle) / "configs"
    base = ConfigParser()
    base.read_config([str(d / c) for c in MULTI_GPU[bundle][config]])
    override = json.loads((d / f"multi_gpu_{config}").read_text())
    for key, new in override.items():
        try:
            old = base[key]
        except (KeyError, IndexError, ValueError):
            continue  # a key of the override only
        new_text = json.dumps(new)
        if isinstance(old, list) and isinstance(new, list):
            for step in old:
                if isinstance(step, str) and step.startswith("$") and not step.startswith("$import"):
                    assert _called(step) in new_text, f"multi_gpu_{config}: {key!r} lost the base step {step!r}"
        elif isinstance(old, str):
            for ref in re.findall(r"@[\w#]+", old):
                assert ref in new_text, f"multi_gpu_{config}: {key!r} lost {ref} of the base value {old!r}"



@pytest.mark.parametrize("bundle,layers", [
    ("variance_sampling_segmentation", ["adapt.json"]),
    ("variance_sampling_segmentation", ["adapt.json", "adapt_selftrain.json"]),
    ("variance_sampling_segmentation", ["adapt.json", "adapt_mcdropout.json"]),
    ("pixel_alignment_segmentation", ["train.json", "self_train.json"]),
])
def test_self_training_configs_distribute_the_engine(bundle, layers):
    """Every self-training configuration (and variant) under its multi-GPU override: the engine labels on rank 0
    and the round trainer trains a DDP model on DistributedSampler shards, with rank-0-only handlers."""
    from monai.bundle import ConfigParser

    d = bundle_dir(bundle) / "configs"
    override = "multi_gpu_adapt.json" if bundle == "variance_sampling_segmentation" else "multi_gpu_self_train.json"
    parser = ConfigParser()
    parser.read_config([str(d / c) for c in layers + [override]])
    assert parser["self_training"]["distributed"] is True and parser["round_trainer"]["distributed"] is True
    assert parser["round_trainer"]["_target_"] == "monai_uda.engines.self_training.RoundTrainer"
    handlers = parser["round_trainer"].get("train_handlers")
    assert handlers is None or "rank0_handlers" in handlers  # None: the round trainer's own rank-0 loss log
    assert parser["initialize"][0].startswith("$monai_uda.bundle.distributed.init_distributed(")
