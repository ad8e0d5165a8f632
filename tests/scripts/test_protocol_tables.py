import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import protocol_tables  # noqa: E402


def test_v2_summary_shows_the_label_free_pick_beside_the_best_method(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.5, size=(3, 8))
    shift = {"source": 0.0, "oracle": 0.4, "bn": 0.1, "st": -0.1}
    rows, res = [], []
    for m, d in shift.items():
        for s in range(3):
            rows += [{"method": m, "seed": s, "name": f"i{i}", "dice": base[s, i] + d} for i in range(8)]
            res.append({"method": m, "seed": s, "dice": float(np.mean(base[s] + d))})
    picks = ["bn", "source", "bn"]  # what the rule chose per seed: its rows are those models' rows
    for s, m in enumerate(picks):
        rows += [{**r, "method": "selected"} for r in rows if r["method"] == m and r["seed"] == s]
        res.append({"method": "selected", "seed": s, "dice": float(np.mean(base[s] + shift[m])), "selected_method": m})
    d = tmp_path / "v2" / "A1"
    d.mkdir(parents=True)
    pd.DataFrame(res).to_csv(d / "results.csv", index=False)
    pd.DataFrame(rows).to_csv(d / "per_image.csv", index=False)
    line = next(x for x in protocol_tables.v2_summary(tmp_path).splitlines() if x.startswith("| A1 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3].startswith("bn: ") and cells[3].endswith("; the only one")  # never the pick itself; st is worse
    assert cells[4].endswith("+ (bn, source, bn)")  # the pick: better than source, and which model per seed
    assert "selected" not in cells[6] and "st" in cells[6]


def test_v2_summary_names_the_methods_the_paired_test_cannot_tell_from_the_best(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.5, size=(3, 8))
    wobble = np.tile([0.01, -0.01], (3, 4)) * np.repeat(np.arange(1, 5), 2)  # zero mean, symmetric: = bn
    dice = {"source": base, "oracle": base + 0.4, "bn": base + 0.1, "bn_twin": base + 0.1 + wobble, "st": base + 0.05}
    rows = [{"method": m, "seed": s, "name": f"i{i}", "dice": v[s, i]} for m, v in dice.items()
            for s in range(3) for i in range(8)]
    res = [{"method": m, "seed": s, "dice": float(v[s].mean())} for m, v in dice.items() for s in range(3)]
    d = tmp_path / "v2" / "A1"
    d.mkdir(parents=True)
    pd.DataFrame(res).to_csv(d / "results.csv", index=False)
    pd.DataFrame(rows).to_csv(d / "per_image.csv", index=False)
    line = next(x for x in protocol_tables.v2_summary(tmp_path).splitlines() if x.startswith("| A1 |"))
    best = [c.strip() for c in line.strip("|").split("|")][3]
    assert best.startswith(("bn: ", "bn_twin: "))
    tied = best.split("no significant difference from it: ")[1]
    assert ("bn_twin" if best.startswith("bn: ") else "bn") == tied  # st is better than source, but below bn


def test_cells_made_at_an_enhancer_rule_the_bundle_has_left_are_marked(tmp_path):
    from monai_uda.benchmarks.methods_s2d import enhancer_epochs

    rng = np.random.default_rng(2)
    base = rng.uniform(0.3, 0.5, size=(3, 8))
    now = enhancer_epochs({})  # train_enhancer.json's cap
    extra = {"enhancer": {"enhancer_epochs": now // 4, "enhancer_validated": True},
             "s2d": {"enhancer_epochs": now, "enhancer_validated": True}}
    shift = {"source": 0.0, "oracle": 0.4, "enhancer": 0.2, "s2d": 0.1}
    rows = [{"method": m, "seed": s, "name": f"i{i}", "dice": base[s, i] + d} for m, d in shift.items()
            for s in range(3) for i in range(8)]
    res = [{"method": m, "seed": s, "dice": float(np.mean(base[s] + d)), **extra.get(m, {})}
           for m, d in shift.items() for s in range(3)]
    d = tmp_path / "v2" / "A1"
    d.mkdir(parents=True)
    pd.DataFrame(res).to_csv(d / "results.csv", index=False)
    pd.DataFrame(rows).to_csv(d / "per_image.csv", index=False)
    table = protocol_tables.v2_table(tmp_path)
    row = {x.split("|")[1].strip(): x for x in table.splitlines() if x.startswith("| ")}
    assert row["enhancer"].rstrip(" |").endswith(protocol_tables.STALE_MARK)
    assert protocol_tables.STALE_MARK not in row["s2d"] and protocol_tables.STALE_NOTE in table
    summary = protocol_tables.v2_summary(tmp_path)
    assert "enhancer: " in summary and protocol_tables.STALE_MARK in summary.splitlines()[2]


def test_a_pick_whose_model_was_rerun_since_is_marked(tmp_path):
    from monai_uda.benchmarks.methods_s2d import enhancer_epochs

    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.5, size=(3, 8))
    shift = {"source": 0.0, "oracle": 0.4, "s2d": 0.1}
    rows = [{"method": m, "seed": s, "name": f"i{i}", "dice": base[s, i] + d} for m, d in shift.items()
            for s in range(3) for i in range(8)]
    now = {"enhancer_epochs": enhancer_epochs({}), "enhancer_validated": True}  # s2d made at today's enhancer rule
    res = [{"method": m, "seed": s, "dice": float(np.mean(base[s] + d)), **(now if m == "s2d" else {})}
           for m, d in shift.items() for s in range(3)]
    d = tmp_path / "v2" / "A1"
    d.mkdir(parents=True)

    def write(picked_dice):  # seed 1 picked s2d; its selected row holds the Dice of the model it picked
        sel = [{"method": "selected", "seed": s, "dice": float(np.mean(base[s])), "selected_method": "source"}
               for s in (0, 2)] + [{"method": "selected", "seed": 1, "dice": picked_dice, "selected_method": "s2d"}]
        pd.DataFrame(res + sel).to_csv(d / "results.csv", index=False)
        pd.DataFrame(rows).to_csv(d / "per_image.csv", index=False)
        return next(x for x in protocol_tables.v2_summary(tmp_path).splitlines() if x.startswith("| A1 |"))

    same = float(np.mean(base[1] + 0.1))
    assert protocol_tables.STALE_MARK not in write(same)  # the pick is today's s2d row
    pick = [c.strip() for c in write(same - 0.05).strip("|").split("|")][4]  # s2d of seed 1 rerun since the pick
    assert protocol_tables.STALE_MARK in pick and "(source, s2d, source)" in pick


def test_the_shared_shallow_to_deep_stage_counts_once_per_seed_in_the_enhancer_row():
    # seed 0: rf built the stage (100 s of enhancer training + 10 s of forests inside its 115 s); seed 1: every row
    # reused a stage built elsewhere (the enhancer row's 5 s do not include it)
    df = pd.DataFrame([
        {"method": "rf", "seed": 0, "wall_seconds": 115.0, "enhancer_train_s": 100.0, "source_forests_s": 10.0},
        {"method": "enhancer", "seed": 0, "wall_seconds": 6.0, "enhancer_train_s": 100.0, "source_forests_s": 10.0},
        {"method": "s2d", "seed": 0, "wall_seconds": 50.0, "enhancer_train_s": 100.0, "source_forests_s": 10.0},
        {"method": "enhancer", "seed": 1, "wall_seconds": 5.0, "enhancer_train_s": 200.0, "source_forests_s": 10.0},
        {"method": "s2d", "seed": 1, "wall_seconds": 60.0, "enhancer_train_s": 200.0, "source_forests_s": 10.0},
        {"method": "bn", "seed": 0, "wall_seconds": 9.0},
    ])
    out = protocol_tables._shared_stage_once(df).set_index(["method", "seed"]).wall_seconds
    assert out[("rf", 0)] == 5.0 and out[("enhancer", 0)] == 116.0 and out[("s2d", 0)] == 50.0
    assert out[("enhancer", 1)] == 215.0 and out[("s2d", 1)] == 60.0 and out[("bn", 0)] == 9.0
    assert df.wall_seconds.sum() + 200.0 + 10.0 == out.sum()  # seed 1's stage added once, seed 0's kept once
