import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import stale_rows  # noqa: E402


def _folder(tmp_path: Path, rows: list[tuple[str, int, float]]) -> Path:
    results = pd.DataFrame([{"pair": "A1", "method": m, "seed": s, "dice": 0.5, "enhancer_epochs": e}
                            for m, s, e in rows])
    results.to_csv(tmp_path / "results.csv", index=False)
    per_image = pd.DataFrame([{"pair": "A1", "method": m, "seed": s, "name": f"img{i}", "dice": 0.5}
                              for m, s, _ in rows for i in range(3)])
    per_image.to_csv(tmp_path / "per_image.csv", index=False)
    return tmp_path


def test_drop_removes_only_the_family_rows_at_another_budget(tmp_path):
    nan = float("nan")
    folder = _folder(tmp_path, [("source", 0, nan), ("rf", 0, 24), ("enhancer", 0, nan), ("s2d", 0, 48),
                                ("selected", 0, nan), ("s2d_norect", 1, 24), ("enhancer", 1, 48)])
    gone = stale_rows.drop(folder, 48)
    assert sorted(zip(gone.method, gone.seed)) == [("enhancer", 0), ("s2d_norect", 1)]
    left = pd.read_csv(folder / "results.csv")  # rf (the forest alone) does not depend on the enhancer
    assert list(zip(left.method, left.seed)) == [("source", 0), ("rf", 0), ("s2d", 0), ("selected", 0), ("enhancer", 1)]
    per_image = pd.read_csv(folder / "per_image.csv")
    assert len(per_image) == 5 * 3 and not ((per_image.method == "enhancer") & (per_image.seed == 0)).any()
    assert stale_rows.drop(folder, 48).empty  # a second run (a resumed queue) drops nothing more


def test_a_rerun_seed_by_seed_drops_one_seeds_rows_and_keeps_the_others(tmp_path):
    folder = _folder(tmp_path, [("enhancer", 0, 24), ("s2d", 0, 24), ("enhancer", 1, 24), ("s2d", 1, 24)])
    gone = stale_rows.drop(folder, 48, seeds=[1])
    assert sorted(zip(gone.method, gone.seed)) == [("enhancer", 1), ("s2d", 1)]
    left = pd.read_csv(folder / "results.csv")  # seed 0's stale rows stay in the tables until seed 0 is rerun
    assert list(zip(left.method, left.seed)) == [("enhancer", 0), ("s2d", 0)]
    assert set(pd.read_csv(folder / "per_image.csv").seed) == {0}
    assert set(pd.read_csv(folder / "superseded_results.csv").seed) == {1}



def test_a_rerun_method_by_method_drops_only_the_asked_methods_rows(tmp_path):
    folder = _folder(tmp_path, [("enhancer", 0, 24), ("s2d", 0, 24), ("s2d_norect", 0, 24), ("s2d_norect", 1, 24)])
    gone = stale_rows.drop(folder, 48, seeds=[0], methods=["s2d_norect", "s2d"])
    assert sorted(zip(gone.method, gone.seed)) == [("s2d", 0), ("s2d_norect", 0)]
    left = pd.read_csv(folder / "results.csv")  # the other methods' (and seeds') stale rows wait for their rerun
    assert list(zip(left.method, left.seed)) == [("enhancer", 0), ("s2d_norect", 1)]
    assert sorted(stale_rows.stale(left, 48, methods=["enhancer"]).method) == ["enhancer"]

def test_a_pseudo_label_nets_row_at_other_epochs_is_stale_though_its_enhancer_is_current(tmp_path):
    rows = pd.DataFrame([{"method": m, "seed": 0, "dice": 0.5, "enhancer_epochs": 48, "epochs": e}
                         for m, e in [("enhancer", float("nan")), ("s2d", 12), ("s2d_noteacher", 24),
                                      ("s2d_norect", float("nan"))]])
    assert stale_rows.stale(rows, 48).empty  # without the net's budget: the enhancer rule alone
    # the enhancer trains no net, and a row that does not record its epochs is not judged on them
    assert list(stale_rows.stale(rows, 48, nets=24).method) == ["s2d"]
    assert sorted(stale_rows.stale(rows, 48, nets=12).method) == ["s2d_noteacher"]


def test_rows_made_before_the_column_was_recorded_count_as_24_epochs(tmp_path):
    pd.DataFrame([{"method": "enhancer", "seed": 0, "dice": 0.5}, {"method": "bn", "seed": 0, "dice": 0.5}]) \
        .to_csv(tmp_path / "results.csv", index=False)
    results = pd.read_csv(tmp_path / "results.csv")
    assert stale_rows.stale(results, 24).empty
    assert list(stale_rows.stale(results, 48).method) == ["enhancer"]


def test_a_stopped_runs_partial_files_lose_the_stale_rows_too(tmp_path):
    """--resume reads the partial files of a run that stopped; a row dropped from the tables alone came back."""
    nan = float("nan")
    folder = _folder(tmp_path, [("source", 0, nan), ("s2d", 0, 24)])
    (folder / ".partial").mkdir()
    partial = _folder(folder / ".partial", [("source", 0, nan), ("s2d", 0, 24), ("enhancer", 1, 24)])
    gone = stale_rows.drop(folder, 48)
    assert sorted(zip(gone.method, gone.seed)) == [("enhancer", 1), ("s2d", 0)]
    for name in ("results.csv", "per_image.csv"):
        for where in (folder, partial):
            assert set(pd.read_csv(where / name).method) == {"source"}, where / name


def test_dropped_rows_are_kept_aside_for_the_validator_study(tmp_path):
    import validator_study

    nan = float("nan")
    folder = tmp_path / "v2" / "A1"
    folder.mkdir(parents=True)
    _folder(folder, [("source", 0, nan), ("s2d", 0, 24)])
    stale_rows.drop(folder, 48)
    assert list(pd.read_csv(folder / "superseded_results.csv").method) == ["s2d"]
    assert len(pd.read_csv(folder / "superseded_per_image.csv")) == 3
    rerun = pd.read_csv(folder / "results.csv")  # the rerun at 48 epochs scores 0.9; the selection saw 0.5's model
    pd.concat([rerun, pd.DataFrame([{"pair": "A1", "method": "s2d", "seed": 0, "dice": 0.9, "enhancer_epochs": 48}])]
              ).to_csv(folder / "results.csv", index=False)
    sel = tmp_path / "selection" / "A1" / "seed0"
    sel.mkdir(parents=True)
    pd.DataFrame([{"candidate": "source", "im": 0.1}, {"candidate": "s2d", "im": 0.2}]).to_csv(sel / "selection.csv",
                                                                                               index=False)
    data = validator_study.load(tmp_path)["A1"].set_index("candidate")
    assert data.dice.to_dict() == {"source": 0.5, "s2d": 0.5}


def test_an_enhancer_without_validation_is_stale_when_the_bundle_validates():
    nan = float("nan")
    results = pd.DataFrame([{"method": "enhancer", "seed": 0, "enhancer_epochs": 100, "enhancer_validated": nan},
                            {"method": "s2d", "seed": 0, "enhancer_epochs": 100, "enhancer_validated": True},
                            {"method": "s2d", "seed": 1, "enhancer_epochs": 48, "enhancer_validated": True},
                            {"method": "s2d_norect", "seed": 0, "enhancer_epochs": 100, "enhancer_validated": False}])
    gone = stale_rows.stale(results, 100, validated=True)
    assert sorted(zip(gone.method, gone.seed)) == [("enhancer", 0), ("s2d", 1), ("s2d_norect", 0)]
    assert list(stale_rows.stale(results, 100, validated=False).method) == ["s2d", "s2d"]
