import json
import math
import os
import shutil

import pandas as pd
import pytest

from monai_uda.benchmarks.methods import METHODS
from monai_uda.benchmarks.runner import gap_closed, markdown_table, run_benchmark


def test_gap_closed():
    assert gap_closed(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert gap_closed(0.2, 0.2, 0.8) == 0.0
    assert math.isnan(gap_closed(0.5, 0.8, 0.8))


def test_registry_has_baselines():
    assert {"source", "oracle"} <= set(METHODS)


def test_quick_benchmark_writes_csv_table_chart(tmp_path, tiny_demo_2d, monkeypatch):
    from monai_uda.benchmarks import runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    df = run_benchmark(tiny_demo_2d, ["source", "oracle"], str(tmp_path), mode="quick", progress=False)
    for f in ("results.csv", "results.md", "results.png"):
        assert os.path.isfile(tmp_path / f)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv.method) == ["source", "oracle"]
    assert csv.loc[csv.method == "oracle", "gap_closed"].iloc[0] == 1.0
    assert "| source |" in (tmp_path / "results.md").read_text()
    assert markdown_table(df).count("\n") == 4 and "dice_loss" in markdown_table(df)
    # cost you can plan with: evaluation included, CPU time, threads and the machine on every row
    row = csv.iloc[1]
    assert row.wall_seconds == pytest.approx(row.seconds + row.eval_seconds, abs=0.11) and row.cpu_seconds > 0
    assert row.threads >= 1 and row.cores >= 1 and row.torch and row.platform
    import monai
    import numpy
    import torch

    assert row.monai == monai.__version__ and row.numpy == numpy.__version__ and row.cpu
    assert row.cpu_capability == torch.backends.cpu.get_cpu_capability()
    header = markdown_table(df).splitlines()[0]
    assert "wall_seconds" in header and "| seconds" not in header  # the table's time includes evaluation
    # per-image results beside the table, one row per method, seed and test image, matching the means
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    n_test = len(json.load(open(tiny_demo_2d))["target_test"])
    assert list(per_image.columns[:4]) == ["pair", "method", "seed", "name"] and len(per_image) == 2 * n_test
    assert per_image.groupby("method").dice.mean().loc["oracle"] == pytest.approx(csv.dice.iloc[1])
    assert "| vs source |" in (tmp_path / "results.md").read_text()


def test_resume_keeps_finished_rows(tmp_path, tiny_demo_2d, monkeypatch):
    from monai_uda.benchmarks import methods, runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    run_benchmark(tiny_demo_2d, ["source"], str(tmp_path), mode="quick", progress=False)
    calls = []
    monkeypatch.setattr(methods, "_train", lambda *a, **k: calls.append(a) or "never")
    df = run_benchmark(tiny_demo_2d, ["source"], str(tmp_path), mode="quick", progress=False, resume=True)
    assert calls == [] and list(df.method) == ["source"]  # neither re-trained nor re-evaluated
    n_test = len(json.load(open(tiny_demo_2d))["target_test"])
    assert len(pd.read_csv(tmp_path / "per_image.csv")) == n_test  # the finished row's per-image results are kept


def test_resume_with_fewer_methods_keeps_the_other_rows(tmp_path, tiny_demo_2d, monkeypatch):
    """A staged run resumes each stage with a subset of the methods: rows it does not ask for stay in the table."""
    from monai_uda.benchmarks import methods, runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    first = run_benchmark(tiny_demo_2d, ["source", "oracle", "bn"], str(tmp_path), mode="quick", progress=False)
    calls = []
    monkeypatch.setattr(methods, "_train", lambda *a, **k: calls.append(a) or "never")
    df = run_benchmark(tiny_demo_2d, ["source"], str(tmp_path), mode="quick", progress=False, resume=True)
    assert calls == [] and list(df.method) == ["source", "oracle", "bn"]
    assert list(df.dice) == pytest.approx(list(first.dice))
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    n_test = len(json.load(open(tiny_demo_2d))["target_test"])
    assert len(per_image) == 3 * n_test and list(dict.fromkeys(per_image.method)) == ["source", "oracle", "bn"]
    assert "| bn |" in (tmp_path / "results.md").read_text()


def test_resume_with_another_seed_keeps_the_first_seeds_rows_even_when_it_stops_again(tmp_path, tiny_demo_2d,
                                                                                          monkeypatch):
    from monai_uda.benchmarks import runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    run_benchmark(tiny_demo_2d, ["source", "bn"], str(tmp_path), mode="quick", progress=False, seeds=[0])

    def boom(ctx):
        raise RuntimeError("machine stopped")

    with monkeypatch.context() as m:
        m.setitem(METHODS["bn"], "fn", boom)
        with pytest.raises(RuntimeError, match="machine stopped"):
            run_benchmark(tiny_demo_2d, ["source", "bn"], str(tmp_path), mode="quick", progress=False, seeds=[1],
                          resume=True)
    partial = pd.read_csv(tmp_path / runner.PARTIAL_DIR / "results.csv")
    assert list(zip(partial.method, partial.seed)) == [("source", 0), ("bn", 0), ("source", 1)]
    df = run_benchmark(tiny_demo_2d, ["source", "bn"], str(tmp_path), mode="quick", progress=False, seeds=[1],
                       resume=True)
    assert list(zip(df.method, df.seed)) == [("source", 0), ("bn", 0), ("source", 1), ("bn", 1)]
    assert "seeds [0, 1]" in (tmp_path / "results.md").read_text()  # the table's seeds, not only this run's


def test_resume_trains_again_a_source_model_whose_training_did_not_finish(tmp_path, tiny_demo_2d, monkeypatch):
    """model.pt appears at the first best validation; a resumed run takes it only with its card (training done)."""
    from monai_uda.benchmarks import runner
    from monai_uda.bundle.stages import model_card_path

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    run_benchmark(tiny_demo_2d, ["source"], str(tmp_path), mode="quick", progress=False)
    model = runner.source_model_path(str(tmp_path), 0)
    trained = []
    monkeypatch.setattr(runner, "train_source", lambda ctx: trained.append(ctx.seed) or model)
    run_benchmark(tiny_demo_2d, ["source", "bn"], str(tmp_path), mode="quick", progress=False, resume=True)
    assert trained == []  # finished: its card is there
    os.remove(model_card_path(model))  # as if the run had stopped during the source training
    shutil.rmtree(tmp_path / runner.PARTIAL_DIR, ignore_errors=True)
    df = pd.read_csv(tmp_path / "results.csv")
    df[df.method == "source"].to_csv(tmp_path / "results.csv", index=False)  # bn still to run
    run_benchmark(tiny_demo_2d, ["source", "bn"], str(tmp_path), mode="quick", progress=False, resume=True)
    assert trained == [0]


def test_source_from_reuses_another_runs_source_models(tmp_path, tiny_demo_2d, monkeypatch):
    from monai_uda.benchmarks import methods, runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    first = tmp_path / "first"
    a = run_benchmark(tiny_demo_2d, ["source"], str(first), mode="quick", progress=False)
    calls = []
    monkeypatch.setattr(methods, "_train", lambda *a, **k: calls.append(a) or "never")
    df = run_benchmark(tiny_demo_2d, ["source"], str(tmp_path / "second"), mode="quick", progress=False,
                       source_from=str(first))
    assert calls == []  # nothing trained: the first run's model is evaluated, with the first run's numbers
    assert df.dice.iloc[0] == pytest.approx(a.dice.iloc[0])
    assert f"source models from `{first}`" in (tmp_path / "second" / "results.md").read_text()
    with pytest.raises(FileNotFoundError, match="seed1"):  # refused before anything runs
        run_benchmark(tiny_demo_2d, ["source"], str(tmp_path / "third"), mode="quick", progress=False,
                      seeds=[0, 1], source_from=str(first))
    assert not (tmp_path / "third").exists()
    with pytest.raises(ValueError, match="no effect"):
        run_benchmark(tiny_demo_2d, ["bn"], str(tmp_path / "third"), mode="quick", progress=False,
                      source_from=str(first), overrides={"source": {"max_epochs": 2}})


def test_combined_table(tmp_path):
    from monai_uda.benchmarks.runner import combined_table

    for pair, d in (("A1", 0.4), ("C1", 0.1)):
        (tmp_path / pair).mkdir()
        pd.DataFrame({"pair": [pair] * 2, "method": ["source", "source"], "seed": [0, 1], "dice": [d, d + 0.2],
                      "seconds": [10, 20]}).to_csv(tmp_path / pair / "results.csv", index=False)
    table = combined_table([str(tmp_path / "A1"), str(tmp_path / "C1")])
    assert "| A1 | source | 2 | 0.500 | 15 |" in table and "| C1 | source | 2 | 0.200 | 15 |" in table


def test_plots_write_png_and_leave_the_matplotlib_backend_alone(tmp_path):
    # Jupyter's inline backend must survive a call (the helpers used to force "Agg")
    import matplotlib
    import pandas as pd

    from monai_uda.methods.bn_reestimation.shift_report import plot_shift
    from monai_uda.benchmarks.runner import plot_results

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        df = pd.DataFrame({"method": ["source", "oracle", "bn"], "dice": [0.2, 0.8, 0.5]})
        p = plot_results(df, str(tmp_path / "r.png"), title="t")
        shift = pd.DataFrame({"layer": ["a.adn.N", "b.adn.N"], "w2_normalized_per_channel": [0.1, 2.0]})
        plot_shift(shift, str(tmp_path / "s.png"))
        assert matplotlib.get_backend() == "svg"
        for f in (p, tmp_path / "s.png"):
            assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)


def test_rows_record_the_code_and_a_resume_with_other_code_says_so(tmp_path, tiny_demo_2d, caplog):
    """Each row records the code that made it (git commit, -dirty); resuming a folder whose rows came from other
    code warns that the table mixes them."""
    from monai_uda.benchmarks.runner import code_version, machine

    assert machine()["code"] == code_version() and code_version()
    pd.DataFrame({"pair": ["demo"], "method": ["source"], "seed": [0], "dice": [0.5], "code": ["0123456789"]}).to_csv(
        tmp_path / "results.csv", index=False)
    with caplog.at_level("WARNING"):
        df = run_benchmark(tiny_demo_2d, ["source"], str(tmp_path), mode="quick", progress=False, resume=True)
    assert df.dice.iloc[0] == 0.5  # the finished row is kept, not re-run
    assert any("other code (0123456789)" in r.getMessage() for r in caplog.records)


def test_a_resume_with_other_settings_runs_those_rows_again(tmp_path, tiny_demo_2d, monkeypatch, caplog):
    """--resume --override bn:mode=reset must not keep the bn rows made without it (the table would say the
    override applied); the source row and model, made with the same settings, stay."""
    from monai_uda.benchmarks import runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    first = run_benchmark(tiny_demo_2d, ["source", "bn"], str(tmp_path), mode="quick", progress=False)
    assert json.loads(first.settings.iloc[1])["overrides"] == {}
    monkeypatch.setattr(runner, "train_source", lambda ctx: pytest.fail("the finished source model is reused"))
    with caplog.at_level("WARNING"):
        df = run_benchmark(tiny_demo_2d, ["source", "bn"], str(tmp_path), mode="quick", progress=False, resume=True,
                           overrides={"bn": {"mode": "reset"}})
    assert json.loads(df.settings.iloc[1])["overrides"] == {"mode": "reset"} and df.bn_mode.iloc[1] == "reset"
    assert first.bn_mode.iloc[1] != "reset" and df.dice.iloc[0] == first.dice.iloc[0]
    assert [r.getMessage().split(": ")[1].split(" was")[0] for r in caplog.records
            if "other settings" in r.getMessage()] == ["bn seed 0"]


def test_source_from_refuses_a_source_model_whose_training_did_not_finish(tmp_path, tiny_demo_2d):
    from monai_uda.benchmarks.runner import source_model_path

    model = source_model_path(str(tmp_path / "other"), 0)
    os.makedirs(os.path.dirname(model))
    open(model, "wb").close()  # written at a best validation, but no card: training did not end
    with pytest.raises(FileNotFoundError, match=r"--source-from .*other: no finished source model .*seed0"):
        run_benchmark(tiny_demo_2d, ["bn"], str(tmp_path / "out"), mode="quick", progress=False, seeds=[0],
                      source_from=str(tmp_path / "other"))


def test_rows_record_the_source_model_they_started_from(tmp_path, tiny_demo_2d):
    """A row whose method starts from the seed's source model records that file's hash (``source_sha256``), so rows
    of one seed made on two machines (whose retrained source models differ) can be told apart; a method that uses no
    source model (the oracle) records none."""
    from monai_uda.benchmarks.runner import source_model_path
    from monai_uda.utils import file_hash

    df = run_benchmark(tiny_demo_2d, ["source", "oracle", "bn"], str(tmp_path), mode="quick", seeds=[0],
                       progress=False)
    sha = df.set_index("method").source_sha256
    assert sha["source"] == file_hash(source_model_path(str(tmp_path), 0))[:16]
    assert sha["bn"] == sha["source"]
    assert pd.isna(sha["oracle"])


def test_a_resume_that_trains_a_seeds_source_model_again_warns(tmp_path, tiny_demo_2d, caplog):
    """The seed's source row was made elsewhere and its model is not here: the model is trained again for the methods
    still to run, and the run says that their rows may rest on another source model than the finished ones."""
    pd.DataFrame({"pair": ["demo"], "method": ["source"], "seed": [0], "dice": [0.5]}).to_csv(
        tmp_path / "results.csv", index=False)
    with caplog.at_level("WARNING"):
        df = run_benchmark(tiny_demo_2d, ["source", "bn"], str(tmp_path), mode="quick", progress=False, resume=True)
    assert df.set_index("method").dice["source"] == 0.5 and "source_sha256" in df
    warned = [r.getMessage() for r in caplog.records if "source model is not here" in r.getMessage()]
    assert len(warned) == 1 and "seed 0's" in warned[0] and "(source)" in warned[0]
