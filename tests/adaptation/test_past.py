"""TopQSelfTraining's round items: translated source and target items must collate together."""

import pytest
import torch
from monai.data import list_data_collate

from monai_uda.adaptation.past import TopQSelfTraining


def _make(mode, tmp_path, target_items):
    net = torch.nn.Conv2d(1, 2, 1)
    return TopQSelfTraining(
        trainer=None, network=net, output_dir=str(tmp_path / "rounds"),
        translated_items=[{"image": "s0.nii.gz", "label": "s0_seg.nii.gz"}],
        target_items=target_items, train_transform=None, infer_transform=None, inferer=None,
        source_transform=(lambda x: x), translated_source_labels=mode, progress=False,
    )


@pytest.mark.parametrize("mode", ["pseudo", "real"])
def test_round_items_share_keys_with_2d_spacing_extras(tmp_path, mode):
    # real 2D datalists carry a per-item "spacing" on target items only: a batch mixing the two used to fail
    target = [{"image": "t0.png", "spacing": [5.0, 5.0]}, {"image": "t1.png", "spacing": [5.0, 5.0]}]
    items = _make(mode, tmp_path, target).rounds_items
    assert len(items) == (3 if mode == "pseudo" else 2)
    assert all(set(it) == {"image"} for it in items)
    batch = list_data_collate([{**it, "label": torch.zeros(1, 4, 4)} for it in items])
    assert batch["label"].shape[0] == len(items)


def test_target_labels_rejected(tmp_path):
    with pytest.raises(ValueError, match="target labels"):
        _make("pseudo", tmp_path, [{"image": "t0.png", "label": "t0_seg.png"}])
