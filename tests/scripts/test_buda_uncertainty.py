import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import buda_uncertainty  # noqa: E402


def test_round_losses_read_the_runs_summaries(tmp_path):
    for seed, method, losses in ((0, "buda", [0.3, 0.2]), (1, "buda", [0.4, 0.1]), (0, "selftrain", [0.5, 0.6]),
                                 (0, "st", [0.9])):
        d = tmp_path / f"seed{seed}" / method
        d.mkdir(parents=True)
        (d / "adapt_summary.json").write_text(json.dumps(
            {"train_history": [{"round": r + 1, "train_loss": v} for r, v in enumerate(losses)]}))
    df = buda_uncertainty.round_losses(tmp_path)
    assert set(df.method) == {"buda", "selftrain"}  # the paper's comparison only
    assert len(df) == 6
    assert abs(df[(df.method == "buda") & (df["round"] == 2)].train_dice_loss.mean() - 0.15) < 1e-12
