"""``monai_uda.distributed`` helpers and the distributed pseudo-label rounds, on 2 gloo ranks (CPU)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist

from monai_uda import distributed as d


def test_single_process_fallbacks(monkeypatch):
    assert not d.is_distributed() and d.get_rank() == 0 and d.get_world_size() == 1 and d.is_rank0()
    net = torch.nn.Linear(2, 2)
    assert d.wrap_ddp(net) is net and d.unwrap(net) is net
    assert d.on_rank0(lambda a, b=0: a + b, 1, b=2) == 3
    t = torch.ones(3)
    assert d.all_reduce(t) is t and d.all_gather_objects("x") == ["x"]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert d.init_distributed() is False  # no torchrun environment: a plain single process
    d.destroy_distributed()  # nothing to destroy


def test_shards_and_interleave():
    assert [d.shard_indices(5, r, 2) for r in range(2)] == [[0, 2, 4], [1, 3]]
    assert [d.shard_indices(5, r, 2, even=True) for r in range(2)] == [[0, 2, 4], [1, 3, 0]]
    assert [d.shard_indices(2, r, 3) for r in range(3)] == [[0], [1], []]
    assert d.interleave_gathered([["a0", "a2", "a4"], ["a1", "a3"]]) == ["a0", "a1", "a2", "a3", "a4"]
    assert d.interleave_gathered([d.shard_indices(7, r, 3) for r in range(3)]) == list(range(7))


def test_rank0_handlers_by_type(monkeypatch):
    class StatsHandler:  # a stand-in with the name of the MONAI class
        pass

    class MyCheckpointSaver(type("CheckpointSaver", (), {})):  # subclasses count too
        pass

    class ValidationHandler:
        pass

    hs = [ValidationHandler(), MyCheckpointSaver(), StatsHandler()]
    assert d.rank0_handlers(hs) == hs
    monkeypatch.setattr(d, "get_rank", lambda: 1)
    assert d.rank0_handlers(hs) == [hs[0]]
    assert d.rank0_handlers(None) == []


# ------------------------------------------------------------------------------------------ 2 gloo ranks
def _env_rank():
    return os.getpid(), os.environ.get("RANK")


def _fail():
    raise OSError("disk full")


class _Probs:
    """predict_fn: fixed 2-class probabilities per item; records which rank labelled."""

    def __init__(self, log):
        self.log = log

    def __call__(self, model, items):
        self.log.append(("predict", dist.get_rank(), len(items)))
        for k, it in enumerate(items):
            p = torch.zeros(2, 4, 4)
            p[1, : k + 1] = 1.0
            p[0] = 1 - p[1]
            yield it, p


def _load_rounds_module():
    """``monai_uda.engines.self_training`` without ``monai_uda.handlers/__init__`` (which imports MONAI:
    ~15 s per worker on a loaded 2-core machine, for nothing this module needs)."""
    import importlib.util

    import monai_uda

    path = os.path.join(os.path.dirname(monai_uda.__file__), "engines", "self_training.py")
    spec = importlib.util.spec_from_file_location("_pseudo_label_rounds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        PseudoLabelRounds = _load_rounds_module().PseudoLabelRounds

        out = {"on_rank0": d.on_rank0(lambda: f"made by {dist.get_rank()}")}
        try:
            d.on_rank0(_fail)
        except RuntimeError as e:
            out["error"] = str(e)
        out["isolated"] = d.on_rank0(_env_rank, isolate=True)
        out["pid"] = os.getpid()
        out["gathered"] = d.interleave_gathered(d.all_gather_objects(d.shard_indices(5)))
        log: list = []
        seen: list = []

        def train(model, datalist, r):
            seen.append((r, sorted(os.path.basename(e["label"]) for e in datalist)))
            return model

        rounds = PseudoLabelRounds(2, os.path.join(out_dir, "rounds"), _Probs(log), None, train,
                                   progress=False, distributed=True)
        rounds.run(torch.nn.Linear(1, 1), [{"image": f"img{k}.nii.gz"} for k in range(3)])
        out["log"], out["seen"] = log, seen
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, str(tmp / "pg_init"), str(tmp)), nprocs=2, join=True)
    return tmp, [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def test_on_rank0_result_error_and_isolation(ranks):
    _, out = ranks
    assert [o["on_rank0"] for o in out] == ["made by 0", "made by 0"]
    assert all("_fail failed on rank 0" in o["error"] and "disk full" in o["error"] for o in out)
    pid, rank_env = out[0]["isolated"]
    assert out[1]["isolated"] == [pid, rank_env]
    assert pid not in (out[0]["pid"], out[1]["pid"]) and rank_env is None  # a fresh process without torchrun env
    assert out[0]["gathered"] == out[1]["gathered"] == [0, 1, 2, 3, 4]


def test_pseudo_label_rounds_rank0_labels_all_ranks_train(ranks):
    tmp, out = ranks
    assert out[0]["log"] == [["predict", 0, 3]] * 3  # rounds 0, 1, 2 labelled by rank 0 only
    assert out[1]["log"] == []
    labels = ["img0.nii.gz", "img1.nii.gz", "img2.nii.gz"]
    for o in out:  # both ranks trained rounds 1 and 2 on the labels rank 0 had just written
        assert o["seen"] == [[1, labels], [2, labels]]
    state = json.loads((tmp / "rounds" / "rounds_state.json").read_text())
    assert state["completed"] == [0, 1, 2]
    assert all((tmp / "rounds" / f"round_{r}" / "img0.nii.gz").is_file() for r in range(3))
