"""PAST's self-training items: translated source and target items must collate together; target labels are refused."""

import json

import pytest
import torch
from monai.data import list_data_collate

from monai_uda.data import UDAData
from monai_uda.methods.past.past import labelled_source_items, self_training_items


def _uda(tmp_path, target_items):
    dl = {"name": "t", "spatial_dims": 2, "in_channels": 1, "labels": {"0": "background", "1": "fg"},
          "source_training": [{"image": "s0.nii.gz", "label": "s0_seg.nii.gz"}],
          "source_validation": [{"image": "s0.nii.gz", "label": "s0_seg.nii.gz"}],
          "target_training": target_items, "target_test": [{"image": "t9.png", "label": "t9_seg.png"}]}
    for it in dl["source_training"] + target_items + dl["target_test"]:
        for f in it.values():
            if isinstance(f, str):
                (tmp_path / f).touch()  # the datalist checks that the files exist, not their content here
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(dl))
    return UDAData(str(path), base_dir=str(tmp_path), deep=False)


@pytest.mark.parametrize("mode", ["pseudo", "real"])
def test_round_items_share_keys_with_2d_spacing_extras(tmp_path, mode):
    # real 2D datalists carry a per-item "spacing" on target items only: a batch mixing the two used to fail
    target = [{"image": "t0.png", "spacing": [5.0, 5.0]}, {"image": "t1.png", "spacing": [5.0, 5.0]}]
    uda = _uda(tmp_path, target)
    items = self_training_items(uda, mode)
    assert len(items) == (3 if mode == "pseudo" else 2)
    assert all(set(it) == {"image"} for it in items)
    assert items[-1]["image"].endswith("t1.png") and (mode == "real" or items[0]["image"].endswith("s0.nii.gz"))
    batch = list_data_collate([{**it, "label": torch.zeros(1, 4, 4)} for it in items])
    assert batch["label"].shape[0] == len(items)
    # the translated source with its real labels: every item in "real" mode, none in Algorithm 1's "pseudo" mode
    labelled = labelled_source_items(uda, mode)
    assert len(labelled) == (1 if mode == "real" else 0)
    assert all("label" in it for it in labelled)


def test_target_labels_rejected(tmp_path):
    from monai_uda.data.datalist import DatalistError

    with pytest.raises(DatalistError, match="target labels"):  # a UDA datalist refuses them already
        _uda(tmp_path, [{"image": "t0.png", "label": "t0_seg.png"}])

    class Pair:  # any object with UDAData.split, holding labelled target items
        def split(self, key, limit=None):
            items = {"source_training": [{"image": "s0.png", "label": "s0_seg.png"}],
                     "target_training": [{"image": "t0.png", "label": "t0_seg.png"}]}[key]
            return items[:limit]

    with pytest.raises(ValueError, match="target labels"):
        self_training_items(Pair(), "pseudo")
    with pytest.raises(ValueError, match="pseudo"):
        self_training_items(_uda(tmp_path, [{"image": "t0.png"}]), "both")


@pytest.mark.parametrize("level, shown", [("WARNING", False), ("INFO", True)])
def test_translate_progress_bar_follows_the_log_level(tmp_path, tiny_demo_2d, capsys, level, shown):
    """monai-uda demo keeps logging at WARNING: no "translate source" bar in its output; a bundle run logs INFO."""
    import logging

    from monai_uda.methods.past.past import translate_datalist

    logger = logging.getLogger("monai_uda.methods.past.past")
    old = logger.level
    logger.setLevel(level)
    try:
        translate_datalist(torch.nn.Identity(), UDAData(tiny_demo_2d), str(tmp_path), keys=("source_validation",))
    finally:
        logger.setLevel(old)
    assert ("translate source" in capsys.readouterr().err) is shown
