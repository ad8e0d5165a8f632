"""BatchNorm re-estimation across 2 gloo ranks (CPU) equals the single-process statistics.

One ``torch.multiprocessing.spawn`` of two ranks runs every scenario (process start-up dominates the cost);
the parent compares what the ranks saved with single-process runs on the same batches.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from monai_uda.methods.bn_reestimation.reestimation import reestimate_bn

STATS = ("running_mean", "running_var", "num_batches_tracked")


def _net() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 2, 1), nn.InstanceNorm2d(2, affine=True, track_running_stats=True),
    )
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net.eval()


def _batches() -> list[torch.Tensor]:
    """Unequal batch sizes and strongly different means: averaging per-rank means would be far off."""
    g = torch.Generator().manual_seed(0)
    sizes, offsets = [3, 1, 2, 5, 2], [0.0, 1.0, -2.0, 0.5, 8.0]
    return [torch.randn(b, 1, 9, 8, generator=g) * (1 + k) + o for k, (b, o) in enumerate(zip(sizes, offsets))]


#: rank -> indices of _batches(): unbalanced (4 batches / 1 batch), rank 1 holds the shifted one
SHARDS = {0: [0, 1, 2, 3], 1: [4]}


def _stats(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if k.endswith(STATS)}


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i]}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batches = _batches()
        mine = [batches[i] for i in SHARDS[rank]]
        out = {}
        for unbiased in (True, False):
            out[f"reset_unbiased{unbiased}"] = _stats(
                reestimate_bn(_net(), mine, mode="reset", unbiased=unbiased, progress=False, distributed=True))
        out["reset_first2"] = _stats(
            reestimate_bn(_net(), mine, mode="reset", layers=2, progress=False, distributed=True))
        out["ema"] = _stats(reestimate_bn(_net(), mine, mode="ema", alpha=0.3, progress=False, distributed=True))
        # rank 1 has nothing at all: the result is rank 0's data alone, and rank 1 still ends up with it
        out["reset_empty_rank1"] = _stats(
            reestimate_bn(_net(), mine if rank == 0 else [], mode="reset", progress=False, distributed=True))
        # the handler's sharding: the single-process batches of 3 of a dataset, dealt round-robin to the ranks
        # (the handler itself imports MONAI, too slow for these workers; the bundle DDP test runs it for real)
        x = torch.cat(batches)
        own = [x[i : i + 3] for i in range(0, len(x), 3)][rank::world]
        out["dealt_reset"] = _stats(reestimate_bn(_net(), own, mode="reset", progress=False, distributed=True))
        # an error on one rank is raised on every rank (nobody hangs in a collective)
        bad = [b.clone() for b in mine]
        if rank == 1:
            bad[0][0, 0, 0, 0] = float("nan")
        try:
            reestimate_bn(_net(), bad, mode="reset", progress=False, distributed=True)
            out["error"] = "none"
        except (ValueError, RuntimeError) as e:
            out["error"] = type(e).__name__
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    d = tmp_path_factory.mktemp("bn_dist")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(d / "pg_init"), str(d)), nprocs=2, join=True)
    return [torch.load(d / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _single(batches, **kw) -> dict[str, torch.Tensor]:
    return _stats(reestimate_bn(_net(), batches, progress=False, **kw))


def _assert_close(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("unbiased", [True, False])
def test_reset_across_ranks_equals_single_process(ranks, unbiased):
    expected = _single(_batches(), mode="reset", unbiased=unbiased)
    for r in range(2):
        _assert_close(ranks[r][f"reset_unbiased{unbiased}"], expected, rtol=1e-6, atol=1e-6)
    # the test discriminates: averaging the ranks' own statistics is far from the pooled result
    per_rank = [_single([_batches()[i] for i in SHARDS[r]], mode="reset", unbiased=unbiased) for r in range(2)]
    naive = (per_rank[0]["1.running_mean"] + per_rank[1]["1.running_mean"]) / 2
    assert not torch.allclose(naive, expected["1.running_mean"], rtol=1e-2, atol=1e-2)
    naive_var = (per_rank[0]["1.running_var"] + per_rank[1]["1.running_var"]) / 2
    assert not torch.allclose(naive_var, expected["1.running_var"], rtol=1e-2, atol=1e-2)


def test_reset_first_layers_and_empty_shard(ranks):
    _assert_close(ranks[0]["reset_first2"], _single(_batches(), mode="reset", layers=2), rtol=1e-6, atol=1e-6)
    rank0_only = _single([_batches()[i] for i in SHARDS[0]], mode="reset")
    for r in range(2):
        _assert_close(ranks[r]["reset_empty_rank1"], rank0_only, rtol=1e-6, atol=1e-6)


def test_handler_deals_single_process_batches(ranks, monkeypatch):
    import monai_uda.distributed as d
    from monai_uda.methods.bn_reestimation.reestimation_handler import BNReestimation

    images = _Images(torch.cat(_batches()))
    net = _net()
    BNReestimation(images, network=net, mode="reset", batch_size=3, progress=False)()
    for r in range(2):  # same statistics when the batches are dealt to 2 ranks
        _assert_close(ranks[r]["dealt_reset"], _stats(net), rtol=1e-6, atol=1e-6)
    # and the handler deals exactly those batches: rank r gets batches r, r + 2, ... of the single-process loader
    handler = BNReestimation(images, mode="reset", batch_size=3, progress=False, distributed=True)
    monkeypatch.setattr(d, "get_world_size", lambda: 2)
    dealt = []
    for r in range(2):
        monkeypatch.setattr(d, "get_rank", lambda r=r: r)
        dealt.append([b["image"] for b in handler.rank_loader()])
    single = [x[i : i + 3] for x in [images.x] for i in range(0, len(images), 3)]
    assert [len(b) for b in dealt] == [3, 2]
    for r in range(2):
        for got, want in zip(dealt[r], single[r::2]):
            assert torch.equal(torch.as_tensor(got), want)


def test_ema_is_average_of_rank_recursions_and_identical_on_ranks(ranks):
    per_rank = [_single([_batches()[i] for i in SHARDS[r]], mode="ema", alpha=0.3) for r in range(2)]
    _assert_close(ranks[0]["ema"], ranks[1]["ema"], rtol=0, atol=0)
    for k, v in ranks[0]["ema"].items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == int(per_rank[0][k]) + int(per_rank[1][k]) - int(_stats(_net())[k])
        else:
            torch.testing.assert_close(v, (per_rank[0][k] + per_rank[1][k]) / 2, rtol=1e-6, atol=1e-6)


def test_error_on_one_rank_raises_on_all(ranks):
    assert ranks[1]["error"] == "ValueError"  # the NaN itself
    assert ranks[0]["error"] == "RuntimeError"  # told by rank 1
