import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import fidelity_tables as ft  # noqa: E402


def _fake_pair(root: Path, pair: str, shift: dict[str, float], seeds: int = 3, images: int = 8) -> None:
    """``<root>/v2/<pair>/{results,per_image}.csv``: each method's per-image Dice = a shared base + its shift."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.5, size=(seeds, images))
    noise = rng.normal(0, 0.01, size=(len(shift), seeds, images))
    rows, res = [], []
    for k, (m, d) in enumerate(shift.items()):
        for s in range(seeds):
            dice = base[s] + d + (0 if m == "source" else noise[k, s])
            rows += [{"pair": pair, "method": m, "seed": s, "name": f"i{i}", "dice": dice[i], "iou": dice[i] / 2}
                     for i in range(images)]
            res.append({"pair": pair, "method": m, "seed": s, "dice": float(dice.mean()),
                        "iou": float(dice.mean() / 2)})
    d = root / "v2" / pair
    d.mkdir(parents=True)
    pd.DataFrame(res).to_csv(d / "results.csv", index=False)
    pd.DataFrame(rows).to_csv(d / "per_image.csv", index=False)


def _diff(root: Path, method: str, baseline: str = "source") -> str:
    """The mean per-image Dice difference, as the page prints it."""
    pi = pd.read_csv(root / "v2" / "A1" / "per_image.csv")
    a, b = (pi[pi.method == m].set_index(["seed", "name"]).dice for m in (method, baseline))
    return f"{(a - b).mean():+.3f} Dice"


def _bullet(text: str, pair: str, method: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(f"- **{pair}, `{method}`**"))


def test_verdicts_and_numbers_on_a_fake_pair(tmp_path):
    # bn clearly better than source; bn_reset no different (noise only); the enhancer clearly worse
    _fake_pair(tmp_path, "A1", {"source": 0.0, "oracle": 0.4, "bn": 0.1, "bn_reset": 0.0, "enhancer": -0.1,
                                "rf": -0.1, "s2d": 0.0})
    bn = ft.verdicts(ft.PAPERS["bn"], tmp_path)
    want = f"reproduced: beats source significantly ({_diff(tmp_path, 'bn')}, p < 0.001, 24 pairs)"
    assert want in _bullet(bn, "A1", "bn")
    assert not _bullet(bn, "A1", "bn").split("**: ")[1].startswith("not")
    assert "on IoU, the paper's metric: better" in _bullet(bn, "A1", "bn")
    assert "no significant difference from source" in _bullet(bn, "A1", "bn_reset")
    assert "no such figure in the paper" in _bullet(bn, "A1", "bn_reset")  # a variant: no claim, no verdict
    assert "not run yet under protocol v2" in _bullet(bn, "A1", "bn_source")

    s2d = ft.verdicts(ft.PAPERS["shallow2deep"], tmp_path, reasons={("enhancer", "A1"): "the forest is too weak"})
    want = f"not reproduced: significantly worse than source ({_diff(tmp_path, 'enhancer')}, p < 0.001"
    assert want in _bullet(s2d, "A1", "enhancer")
    assert _bullet(s2d, "A1", "enhancer").endswith("Measured reason: the forest is too weak.")
    assert "not reproduced: no significant difference from source" in _bullet(s2d, "A1", "s2d")
    assert "Measured reason: not measured yet" in _bullet(s2d, "A1", "s2d")
    assert "reproduced: significantly worse than source, as in the paper" in _bullet(s2d, "A1", "rf")

    table = ft.method_table(ft.PAPERS["bn"], tmp_path)
    row = next(x for x in table.splitlines() if x.startswith("| A1 | `bn`: "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    res = pd.read_csv(tmp_path / "v2" / "A1" / "results.csv")
    assert cells[2] == "Dice"
    assert cells[3] == ft.mean_std(res[res.method == "source"].dice) + " (3)"
    assert cells[4] == ft.mean_std(res[res.method == "bn"].dice) + " (3)"
    assert cells[5] == ft.mean_std(res[res.method == "oracle"].dice) + " (3)"
    assert cells[6] == f"+ ({_diff(tmp_path, 'bn')}, p < 0.001, 24 pairs)"
    assert "0.556 → 0.736" in cells[7]  # the paper's figure beside it
    iou = table.splitlines()[table.splitlines().index(row) + 1]
    assert "| IoU |" in iou and ft.mean_std(res[res.method == "bn"].iou) in iou

    vs = ft.versus_table(ft.PAPERS["shallow2deep"], tmp_path)
    assert "`enhancer` vs `rf` | Table 2: F1 0.840 vs 0.647 | = no significant difference, unlike the paper" in vs
    assert "`s2d` vs `enhancer`" in vs and "+ better, as in the paper" in vs


def test_missing_rows_read_not_run_yet(tmp_path):
    _fake_pair(tmp_path, "A1", {"source": 0.0, "oracle": 0.4, "bn": 0.1})  # A1 without buda; no B2 at all
    text = ft.method_section("buda", tmp_path)
    assert "- **A1, `buda`**: not run yet under protocol v2." in text
    assert "- **B2, `buda`**: not run yet under protocol v2." in text
    row = next(x for x in text.splitlines() if x.startswith("| A1 | `buda`: "))
    assert "| — |" in row and row.count("not run yet under protocol v2") == 1
    assert "| A1 | `buda` vs `mcdropout` |" in text
    page = ft.page(tmp_path)
    assert page.startswith("# Fidelity to the papers") and "python scripts/fidelity_tables.py --write" in page
    assert all(f"## {e['title']}" in page for e in ft.PAPERS.values())


def test_extra_seeds_join_the_pair_for_the_comparisons(tmp_path):
    _fake_pair(tmp_path, "A1", {"source": 0.0, "oracle": 0.4, "buda": 0.05, "selftrain": 0.05})
    extra = tmp_path / "extra"
    _fake_pair(extra, "A1", {"source": 0.0, "buda": 0.15, "selftrain": 0.05}, seeds=5)  # seeds 0-4 ...
    for name in ("results.csv", "per_image.csv"):  # ... of which 0-2 clash with the v2 rows and are dropped
        (tmp_path / "v2_extra" / "A1_seeds34").mkdir(parents=True, exist_ok=True)
        (extra / "v2" / "A1" / name).rename(tmp_path / "v2_extra" / "A1_seeds34" / name)
    assert sorted(ft.load(tmp_path, "A1")[0].query("method == 'buda'").seed) == [0, 1, 2]  # only where asked
    results, per_image = ft.load(tmp_path, "A1", extra=True)
    assert sorted(results[results.method == "buda"].seed) == [0, 1, 2, 3, 4]
    assert sorted(results[results.method == "oracle"].seed) == [0, 1, 2]
    assert len(per_image[per_image.method == "buda"]) == 5 * 8
    v2 = pd.read_csv(tmp_path / "v2" / "A1" / "results.csv")
    kept = results[(results.method == "buda") & (results.seed < 3)].dice.to_numpy()
    assert np.allclose(kept, v2[v2.method == "buda"].dice.to_numpy())  # the v2 rows win a clash
    assert "40 pairs" in ft.versus_table(ft.PAPERS["buda"], tmp_path)  # buda vs selftrain over seeds 0-4
    assert "(5)" in ft.method_table(ft.PAPERS["buda"], tmp_path) and "(5)" not in ft.method_table(ft.PAPERS["bn"], tmp_path)


def test_a_comparison_unlike_the_paper_gets_its_measured_reason(tmp_path):
    # the paper has buda better than selftrain; here they are equal (noise only), and buda beats cbst as in the paper
    _fake_pair(tmp_path, "A1", {"source": 0.0, "oracle": 0.4, "buda": 0.05, "selftrain": 0.05, "cbst": -0.1})
    text = ft.versus_table(ft.PAPERS["buda"], tmp_path, reasons={("buda", "selftrain", "A1"): "the map is blind"})
    assert "- **A1, `buda` vs `selftrain`** unlike the paper. Measured reason: the map is blind." in text
    assert "`buda` vs `cbst`** unlike" not in text  # as in the paper: no reason asked for
    assert "Measured reason: not measured yet." in ft.versus_table(ft.PAPERS["buda"], tmp_path, reasons={})


def test_early_on_d1_reads_the_teacher_and_how_each_refinement_ran(tmp_path):
    import json

    d = tmp_path / "early_teacher" / "D1"
    (d / "refinement").mkdir(parents=True)
    assert ft._d1_early_vs_source(tmp_path) == ""  # nothing measured: the page says so
    pd.DataFrame([{"seed": s, "final_before": 0.5, "early_before": 0.8, "final_after": 0.6, "early_after": 0.7}
                  for s in (0, 1)]).to_csv(d / "summary.csv", index=False)
    (d / "refinement" / "seed0.json").write_text(json.dumps({"agreement_converged": True, "epochs_to_convergence": 3,
                                                             "agreement_history": [0.5, 0.6, 0.601]}))
    (d / "refinement" / "seed1.json").write_text(json.dumps({"agreement_converged": False,
                                                             "agreement_history": [0.0, 0.7, 0.03]}))
    text = ft._d1_early_vs_source(tmp_path)
    assert "early head 0.800" in text and "ran to its cap without meeting the paper's stop rule in seed 1;" in text
    assert "met the rule in seed 0 after epoch 3 at an agreement of 0.60." in text  # not near 0: no aside
    assert "seed 1: 0.00 to 0.70, last 0.03" in text


def test_a_method_whose_seeds_split_around_source_gets_the_per_seed_account(tmp_path):
    d = tmp_path / "v2" / "A1"
    d.mkdir(parents=True)
    rows = [{"method": "source", "seed": s, "dice": 0.5} for s in range(3)]
    rows += [{"method": "s2d_noteacher", "seed": s, "dice": v} for s, v in enumerate((0.6, 0.4, 0.7))]
    rows += [{"method": "s2d_norect", "seed": s, "dice": 0.6} for s in range(3)]
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    text = ft._seed_account(tmp_path, "A1", "s2d_noteacher")
    assert "seed 0: 0.600 against 0.500, seed 2: 0.700 against 0.500 above source" in text
    assert "seed 1: 0.400 against 0.500 below it" in text
    assert ft._seed_account(tmp_path, "A1", "s2d_norect") == ""  # every seed above: no split to report


def test_s2d_against_its_teacher_on_a1_reads_the_teacher_study(tmp_path):
    d = tmp_path / "s2d_teacher" / "A1"
    d.mkdir(parents=True)
    assert ft._a1_s2d_teacher(tmp_path) == ""  # nothing measured: the page says so
    rows = []
    for seed, (teacher, net) in enumerate(((0.7, 0.6), (0.5, 0.6), (0.6, 0.6))):
        for split, shift in (("target_training", 0.1), ("target_test", 0.0)):
            for i in range(5):
                rows.append({"seed": seed, "split": split, "image": f"im{i}", "predictor": "enhancer",
                             "dice": teacher + shift, "agreement": 1.0})
                rows.append({"seed": seed, "split": split, "image": f"im{i}", "predictor": "s2d",
                             "dice": net + shift + 0.01 * i, "agreement": 0.5 + shift})
                rows.append({"seed": seed, "split": split, "image": f"im{i}", "predictor": "s2d_noteacher",
                             "dice": 0.0, "agreement": 0.0})  # another net: not part of this account
    pd.DataFrame(rows).to_csv(d / "per_image.csv", index=False)
    text = ft._a1_s2d_teacher(tmp_path)
    assert "the net scores 0.720 ± 0.000 against the enhancer's 0.700 ± 0.082" in text
    assert "(+0.020 Dice" in text and "15 pairs" in text  # paired over (seed, image) of target_training
    assert "agree with the enhancer's pseudo-labels at 0.600 ± 0.000 Dice (on target_test 0.500 ± 0.000)" in text
    assert "0: 0.700 / 0.620, 1: 0.500 / 0.620, 2: 0.600 / 0.620" in text
    assert "above its teacher in seed(s) 1, 2 and below it in seed(s) 0" in text
    assert "its gain over it is not consistent over seeds" in text
    assert "longer net budget with this enhancer moves it is not measured" in text
    (tmp_path / "budget" / "s2d_net_e8x").mkdir(parents=True)
    (tmp_path / "budget" / "s2d_net_e8x" / "per_image.csv").write_text("x")
    assert "the `s2d_net_e8x` rows of [protocol.md]" in ft._a1_s2d_teacher(tmp_path)


def test_a_comparison_unlike_the_paper_gets_its_per_seed_order(tmp_path):
    d = tmp_path / "v2" / "A1"
    d.mkdir(parents=True)
    rows = [("a", 0, 0.80), ("b", 0, 0.82), ("a", 1, 0.66), ("b", 1, 0.51), ("a", 2, 0.74), ("b", 2, 0.75)]
    pd.DataFrame([{"method": m, "seed": s, "dice": x} for m, s, x in rows]).to_csv(d / "results.csv", index=False)
    text = ft._seed_order("A1", "a", "b")(tmp_path)
    assert "above `b` in seed(s) 1: 0.660 vs 0.510 and below it in seed(s) 0: 0.800 vs 0.820, 2: 0.740 vs 0.750" in text
    assert "seed 1 carries 83 % of the absolute per-seed differences" in text  # 0.15 of 0.18
    assert ft._seed_order("A1", "a", "c")(tmp_path) == ""  # a method without rows: nothing to account for
    rows += [("c", 0, 0.70), ("c", 1, 0.50), ("c", 2, 0.60)]
    pd.DataFrame([{"method": m, "seed": s, "dice": x} for m, s, x in rows]).to_csv(d / "results.csv", index=False)
    assert ft._seed_order("A1", "c", "a")(tmp_path).startswith("`c` is below `a` in every seed (0: 0.700 vs 0.800")


def test_a_cell_with_rows_at_a_budget_the_bundle_has_left_is_marked(tmp_path):
    from monai_uda.benchmarks.methods_s2d import enhancer_epochs, enhancer_validated, net_epochs

    _fake_pair(tmp_path, "A1", {"source": 0.0, "oracle": 0.4, "rf": -0.1, "enhancer": 0.1, "s2d": 0.2})
    res_file = tmp_path / "v2" / "A1" / "results.csv"
    res = pd.read_csv(res_file)
    family = res.method.isin(["enhancer", "s2d"])  # the bundle's budgets: current rows
    res.loc[family, "enhancer_epochs"], res.loc[family, "enhancer_validated"] = enhancer_epochs({}), enhancer_validated({})
    res.loc[res.method == "s2d", "epochs"] = net_epochs({})
    res.to_csv(res_file, index=False)

    def row(text: str, start: str) -> str:
        return next(x for x in text.splitlines() if x.startswith(start))

    table = ft.method_table(ft.PAPERS["shallow2deep"], tmp_path)
    assert ft.STALE_MARK not in table
    res.loc[(res.method == "s2d") & (res.seed == 2), "epochs"] = net_epochs({}) // 2  # one seed's net: a former budget
    res.to_csv(res_file, index=False)
    table = ft.method_table(ft.PAPERS["shallow2deep"], tmp_path)
    cells = [c.strip() for c in row(table, "| A1 | `s2d`: ").strip("|").split("|")]
    assert cells[4].endswith(f"(3) {ft.STALE_MARK}")
    assert ft.STALE_MARK not in row(table, "| A1 | `enhancer`: ") and table.endswith(ft.STALE_FIDELITY_NOTE)
    vs = ft.versus_table(ft.PAPERS["shallow2deep"], tmp_path)
    assert row(vs, "| A1 | `s2d` vs `enhancer`").endswith(f"{ft.STALE_MARK} |")
    assert ft.STALE_MARK not in row(vs, "| A1 | `enhancer` vs `rf`")
