import pytest

from monai_uda.methods.shallow2deep.workflow import enhancer_validation_items


class _UDA:
    def __init__(self, splits):
        self.splits = splits

    def split(self, key, limit=None):
        items = [dict(it) for it in self.splits.get(key, [])]
        return items[:limit] if limit else items


def test_validation_items_are_source_validation_each_naming_a_forest_in_turn():
    uda = _UDA({"source_validation": [{"image": f"v{k}.nii.gz", "label": f"l{k}.nii.gz"} for k in range(5)],
                "target_test": [{"image": "t.nii.gz", "label": "tl.nii.gz"}]})
    items = enhancer_validation_items(uda, "source_validation", n_forests=3)
    assert [it["image"] for it in items] == [f"v{k}.nii.gz" for k in range(5)]
    assert [it["forest_index"] for it in items] == [0, 1, 2, 0, 1]
    assert len(enhancer_validation_items(uda, "source_validation", n_forests=3, limit=2)) == 2
    with pytest.raises(ValueError, match="'source_validation' is empty.*validate_during_training"):
        enhancer_validation_items(_UDA({}), "source_validation")
