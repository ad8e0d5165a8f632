import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import early_teacher  # noqa: E402


def _run(tmp_path: Path, datalist: str, refine, levels=(0,), hidden=16) -> Path:
    """``<run>/seed0/early/{head_model,model}.pt``: a random segmentor and its network after ``refine``."""
    from monai_uda.data import UDAData
    from monai_uda.methods.early_features.early_head import EarlyFeaturesSegmentor
    from monai_uda.networks import UDAUNet

    uda = UDAData(datalist)
    torch.manual_seed(0)
    seg = EarlyFeaturesSegmentor(UDAUNet(spatial_dims=2, in_channels=uda.in_channels, out_channels=uda.num_classes),
                                 levels=levels, hidden_channels=hidden)
    d = tmp_path / "seed0" / "early"
    d.mkdir(parents=True)
    torch.save(seg.state_dict(), d / "head_model.pt")
    refine(seg.network)
    torch.save(seg.network.state_dict(), d / "model.pt")
    return tmp_path


def test_before_and_after_agree_when_refinement_changed_nothing(tmp_path, tiny_demo_2d):
    run = _run(tmp_path, tiny_demo_2d, lambda net: None, levels=(1,), hidden=0)  # a level-1 linear head
    rows = pd.DataFrame(early_teacher.seed_rows(run, 0, 32, Path(tiny_demo_2d)))
    assert len(rows) > 0 and rows.split.eq("target_test").all()
    assert (rows.final_before == rows.final_after).all() and (rows.early_before == rows.early_after).all()


def test_the_refined_network_is_the_after_model_and_the_summary_margin(tmp_path, tiny_demo_2d):
    def everything_foreground(net):  # the final layer's bias decides: every pixel foreground
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        torch.nn.init.zeros_(last.weight)
        last.bias.data = torch.tensor([-10.0, 10.0])

    run = _run(tmp_path, tiny_demo_2d, everything_foreground)
    rows = pd.DataFrame(early_teacher.seed_rows(run, 0, 32, Path(tiny_demo_2d)))
    src = pd.DataFrame(early_teacher.seed_rows(run, 0, 32, Path(tiny_demo_2d), "source_validation"))
    assert "final_after" not in src  # on source, only the network before refinement
    assert (rows.final_after != rows.final_before).any() and (rows.final_after > 0).all()
    s = early_teacher.summary(pd.concat([rows, src]))
    assert abs(s.teacher_margin[0] - (rows.final_before.mean() - rows.early_before.mean())) < 1e-12
    assert abs(s.early_before_source[0] - src.early_before.mean()) < 1e-12


def test_head_settings_are_read_from_the_checkpoint():
    from monai_uda.methods.early_features.early_head import EarlyFeaturesSegmentor
    from monai_uda.networks import UDAUNet

    for levels, hidden in (((0,), 16), ((1,), 0), ((0, 1), 8)):
        seg = EarlyFeaturesSegmentor(UDAUNet(spatial_dims=2, in_channels=1, out_channels=2), levels=levels,
                                     hidden_channels=hidden)
        assert early_teacher.head_settings(seg.state_dict()) == (list(levels), hidden)


def test_a_checkpoint_that_does_not_fit_is_a_one_line_error_naming_it(tmp_path, tiny_demo_2d):
    import pytest

    run = _run(tmp_path, tiny_demo_2d, lambda net: None)
    bad = run / "seed0" / "early" / "model.pt"
    torch.save({"conv_0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match=f"^{bad} does not fit the segmentor of .*head_model.pt: "):
        early_teacher.seed_rows(run, 0, 32, Path(tiny_demo_2d))
    torch.save({"network.x": torch.zeros(1)}, run / "seed0" / "early" / "head_model.pt")
    with pytest.raises(ValueError, match="head_model.pt is not an early-features segmentor checkpoint"):
        early_teacher.seed_rows(run, 0, 32, Path(tiny_demo_2d))


def test_two_heads_are_refused(tmp_path, tiny_demo_2d):
    import pytest

    run = _run(tmp_path, tiny_demo_2d, lambda net: None, levels=(0, 1))
    with pytest.raises(ValueError, match=r"has heads at levels \[0, 1\]"):
        early_teacher.seed_rows(run, 0, 32, Path(tiny_demo_2d))


def test_rows_of_seeds_computed_elsewhere_are_kept_and_this_runs_seeds_replace_theirs():
    earlier = pd.DataFrame({"split": "target_test", "seed": [0, 0, 1], "image": ["a", "b", "a"],
                            "final_before": [0.1, 0.2, 0.3]})
    now = pd.DataFrame({"split": "target_test", "seed": [1, 2], "image": ["a", "a"], "final_before": [0.9, 0.8]})
    merged = early_teacher.with_other_seeds(now, earlier)
    assert list(zip(merged.seed, merged.final_before)) == [(0, 0.1), (0, 0.2), (1, 0.9), (2, 0.8)]
    assert early_teacher.with_other_seeds(now, None) is now
