"""Which BatchNorm statistics suit the sliding-window evaluation of a trained model? The target-test Dice of the
same weights with the training statistics (crops), with statistics recomputed over whole images of a split, and
over 128^2 windows of them (docs/benchmarks/precise_bn_check/README.md).

    python scripts/precise_bn_check.py RUN MODEL SPLIT     # e.g. results/v2/A1 seed0/oracle oracle_training
"""
import os, sys, tempfile
import torch
torch.set_num_threads(1)
from monai_uda.bundle import run_bundle
from monai_uda.data import UDAData
from monai_uda.networks import UDAUNet
from monai_uda.transforms import segmentation_transforms

run, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
dl = sorted(p for p in os.listdir(run) if p.endswith(".json"))[0]
dl = os.path.join(run, dl)
uda = UDAData(dl)
sd = torch.load(os.path.join(run, model, "model.pt"), map_location="cpu", weights_only=True)

def evaluate(state, tag):
    d = tempfile.mkdtemp()
    p = os.path.join(d, "m.pt"); torch.save(state, p)
    wf = run_bundle("source_segmentation", ["train.json", "evaluate.json"], workflow_type=None, datalist=dl, checkpoint=p,
                    eval_dir=os.path.join(d, "ev"), ckpt_dir=d, output_dir=d, roi_size=[128, 128], progress=False,
                    device="$torch.device('cpu')")
    m = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    print(tag, {k: round(float(v), 4) for k, v in m.items()}, flush=True)

def stats(images):
    net = UDAUNet(spatial_dims=2, in_channels=1, out_channels=2); net.load_state_dict(sd)
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(images, net)
    return net.state_dict()

tf = segmentation_transforms("target", uda=uda)
imgs = [tf(it)["image"][None] for it in uda.split(key)]
evaluate(sd, "training-crop stats")
evaluate(stats(imgs), "whole-image stats")
wins = []
for x in imgs:
    h, w = x.shape[-2:]
    for i in range(0, h - 127, 96):
        for j in range(0, w - 127, 96):
            wins.append(x[..., i:i + 128, j:j + 128])
batches = [torch.cat(wins[k:k + 16]) for k in range(0, len(wins), 16)]
evaluate(stats(batches), f"window stats ({len(wins)} windows of 128^2, batches of 16)")
