import os

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader

from monai_uda.methods.past.cyclegan_trainer import (
    CycleGANKeys,
    CycleGANTrainer,
    ImagePool,
    UnpairedDataset,
    atomic_checkpoint_saver,
)
from monai_uda.methods.past.cyclegan_losses import CycleGANLoss
from monai_uda.methods.past.cyclegan_networks import CycleGAN


def _setup(n_src=4, pool_size=2):
    torch.manual_seed(0)
    m = CycleGAN(g_features=4, n_residual=1, d_channels=4, d_layers=2)
    src = [torch.randn(1, 32, 32) for _ in range(n_src)]
    tgt = [torch.randn(1, 32, 32) * 2 + 1 for _ in range(3)]
    dl = DataLoader(UnpairedDataset(src, tgt, seed=1), batch_size=2)
    g_opt = torch.optim.Adam(list(m.g_st.parameters()) + list(m.g_ts.parameters()), 1e-3, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(list(m.d_s.parameters()) + list(m.d_t.parameters()), 1e-3, betas=(0.5, 0.999))
    return m, dl, g_opt, d_opt


def test_two_iterations_update_all_networks_and_checkpoint(tmp_path, one_thread):
    m, dl, g_opt, d_opt = _setup()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    trainer = CycleGANTrainer(
        "cpu", 1, dl, m.g_st, m.g_ts, m.d_s, m.d_t, g_opt, d_opt,
        loss_function=CycleGANLoss(lambda_cycle=10, lambda_identity=5), pool_size=2,
    )
    saver = atomic_checkpoint_saver(
        str(tmp_path), {"cyclegan": m, "g_opt": g_opt}, save_final=True, final_filename="final.pt"
    )
    saver.attach(trainer)
    trainer.run()
    assert trainer.state.iteration == 2
    out = trainer.state.output
    for key in (CycleGANKeys.GLOSS, CycleGANKeys.DLOSS, CycleGANKeys.CYCLE, CycleGANKeys.ADV, CycleGANKeys.IDENTITY):
        assert isinstance(out[key], float) and out[key] == out[key]
    assert out[CycleGANKeys.FAKE_T].shape == (2, 1, 32, 32)
    for name in ("g_st", "g_ts", "d_s", "d_t"):  # each network was updated
        changed = any(not torch.equal(before[k], v) for k, v in m.state_dict().items() if k.startswith(name + "."))
        assert changed, name
    assert os.listdir(tmp_path) == ["final.pt"]  # written atomically: no temp file left
    ckpt = torch.load(tmp_path / "final.pt", weights_only=True)
    m2 = CycleGAN(g_features=4, n_residual=1, d_channels=4, d_layers=2)
    m2.load_state_dict(ckpt["cyclegan"])
    assert all(torch.equal(a, b) for a, b in zip(m2.state_dict().values(), m.state_dict().values()))
    assert saver._final_checkpoint.save_handler._atomic


def test_generator_loss_decreases_with_cycle_only(one_thread):
    m, dl, g_opt, d_opt = _setup(n_src=8)
    loss = CycleGANLoss(lambda_cycle=10, lambda_identity=0, lambda_adv=0)
    trainer = CycleGANTrainer("cpu", 3, dl, m.g_st, m.g_ts, m.d_s, m.d_t, g_opt, d_opt, loss_function=loss, pool_size=0)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output[CycleGANKeys.CYCLE]))
    trainer.run()
    assert len(losses) == 12 and min(losses[-3:]) < losses[0]


def test_bad_batch_key(one_thread):
    m, _, g_opt, d_opt = _setup()
    dl = DataLoader([{"image": torch.randn(1, 32, 32)}], batch_size=1)
    trainer = CycleGANTrainer("cpu", 1, dl, m.g_st, m.g_ts, m.d_s, m.d_t, g_opt, d_opt)
    with pytest.raises(KeyError, match="'source'"):
        trainer.run()


def test_unpaired_dataset_and_pool():
    ds = UnpairedDataset([0, 1, 2], [10, 20], transform_source=lambda x: x + 100, seed=0)
    items = [ds[i] for i in range(3)]
    assert [it["source"] for it in items] == [100, 101, 102]
    assert all(it["target"] in (10, 20) for it in items)
    with pytest.raises(ValueError, match="target"):
        UnpairedDataset([0], [])
    pool = ImagePool(0)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    assert torch.equal(pool.query(x), x) and not pool.query(x).requires_grad
    pool = ImagePool(2)
    y = pool.query(x)
    assert y.shape == x.shape and len(pool.images) == 2
