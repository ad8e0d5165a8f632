"""Does PAST's CycleGAN translate? Train ``train_translation.json`` + ``cyclegan.json`` with one setting and measure
(one thread). The v1 check (docs/benchmarks/past_translator/README.md, first table); scripts/past_translator_v2.py
measures every translator, the default intensity translator included.

Measures on 12 source and 12 target training images (z-scored as for segmentation): the 1D Wasserstein
distance between the intensity distributions of the translated source and the target (against the source's own
distance), the correlation of the translated source with its input (1 = identity), the mean |T(x) - x| and
the cycle error mean |F(T(x)) - x|, both relative to mean |x|. Appends one JSON line to
``<out_root>/results.jsonl`` (docs/benchmarks/past_translator/README.md).

    python scripts/past_translator_check.py DATALIST NAME '{"epochs": 12, "lid": 5.0, "residual": true}' [OUT_ROOT]
"""
import json, os, sys, time
import numpy as np, torch
from scipy.stats import wasserstein_distance
torch.set_num_threads(1)
from monai_uda.bundle import run_bundle
from monai_uda.data import UDAData
from monai_uda.transforms import segmentation_transforms
from monai_uda.methods.past.cyclegan_networks import CycleGAN

def metrics(ckpt, datalist, cfg):
    uda = UDAData(datalist)
    tf = segmentation_transforms("target", uda=uda)
    net = CycleGAN(spatial_dims=2, in_channels=1, g_features=cfg.get("g", 16), n_down=2, n_residual=3, d_channels=16,
                   d_layers=3, residual_output=cfg["residual"])
    sd = torch.load(ckpt, map_location="cpu", weights_only=False)
    net.load_state_dict(sd["cyclegan"] if "cyclegan" in sd else sd)
    net.eval()
    xs = [tf(it)["image"] for it in uda.split("source_training")[:12]]
    ts = [tf(it)["image"] for it in uda.split("target_training")[:12]]
    def crop(x):  # divisible by 4
        h, w = x.shape[-2:]
        return x[..., : h // 4 * 4, : w // 4 * 4]
    with torch.no_grad():
        gx = [net.g_st(crop(x)[None])[0] for x in xs]
        cyc = [net.g_ts(g[None])[0] for g in gx]
    X = np.concatenate([crop(x).numpy().ravel() for x in xs]); G = np.concatenate([g.numpy().ravel() for g in gx])
    T = np.concatenate([t.numpy().ravel() for t in ts])
    C = np.concatenate([c.numpy().ravel() for c in cyc])
    z = lambda a: (a - a.mean()) / (a.std() + 1e-8)
    rng = np.random.default_rng(0); s = lambda a: rng.choice(a, 200000, replace=True)
    return {"w1_src_tgt": wasserstein_distance(s(z(X)), s(z(T))), "w1_trans_tgt": wasserstein_distance(s(z(G)), s(z(T))),
            "corr_trans_src": float(np.corrcoef(G, X)[0, 1]), "identity_dist": float(np.abs(G - X).mean() / np.abs(X).mean()),
            "cycle_err": float(np.abs(C - X).mean() / np.abs(X).mean())}

if __name__ == "__main__":
    datalist, name = sys.argv[1], sys.argv[2]
    cfg = json.loads(sys.argv[3])
    root = sys.argv[4] if len(sys.argv) > 4 else "results/past_translator"
    out = os.path.join(root, name)
    ov = dict(datalist=datalist, ckpt_dir=out, output_dir=out, translation_epochs=cfg["epochs"], translation_epoch_length=20,
              translation_batch_size=4, translation_patch_size=[cfg.get("patch", 128)] * 2, lambda_identity=cfg["lid"],
              **{"translator_def#residual_output": cfg["residual"], "translator_def#g_features": cfg.get("g", 16)},
              device="$torch.device('cpu')", amp=False, seed=0, progress=False)
    t = time.time()
    run_bundle("pixel_alignment_segmentation", ["train_translation.json", "cyclegan.json"], workflow_type=None, **ov)
    m = metrics(os.path.join(out, "translation", "cyclegan.pt"), datalist, cfg)
    m.update(name=name, seconds=round(time.time() - t), **cfg)
    print(json.dumps(m))
    with open(os.path.join(root, "results.jsonl"), "a") as f:
        f.write(json.dumps(m) + "\n")
