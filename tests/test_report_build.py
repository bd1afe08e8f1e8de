"""The report builder on synthetic studies, in process: layouts (many levels, three factors),
diagnostics, a study file that no longer parses, and the claim schema of study files."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dlbench.config import parse_study_file
from dlbench.errors import ConfigError
from PIL import Image

from dlbench.report import figures
from dlbench.report.build import chance_levels, write_study_report
from dlbench.report.data import study_data
from dlbench.report.document import Document, css_width

EPOCHS = 3


def synthetic_record(levels: dict[str, list[str]], seeds: int, failed: set[str] = frozenset(),
                     diagnostics: bool = True, study: str = "s", accuracy: dict[str, float] | None = None,
                     noise: float = 0.01, num_classes: int = 0) -> SimpleNamespace:
    """A StudyRecord-like object: trials, per-epoch metrics and per-layer diagnostics. Level i's
    mean accuracy is 0.5 + 0.05 i unless ``accuracy`` names it; seeds vary by ``noise``."""
    rng = np.random.default_rng(0)
    trials, epochs, diag = [], [], []
    cells = [dict(zip(levels, combo)) for combo in itertools.product(*levels.values())]
    for index, cell in enumerate(cells):
        label = next(iter(cell.values())) if len(cell) == 1 else ",".join(f"{f}={v}" for f, v in cell.items())
        for seed in range(seeds):
            run_id = f"run{index}-{seed}"
            ok = label not in failed
            acc = (accuracy or {}).get(label, 0.5 + 0.05 * index) + noise * rng.standard_normal()
            final = {"train_accuracy": acc + 0.1, "test_accuracy": acc, "val_accuracy": acc, "train_loss": 1 - acc,
                     "test_loss": 1.2 - acc, "val_loss": 1.2 - acc} if ok else {}
            trials.append({"run_id": run_id, "study": study, "level": label, "seed": seed,
                           "status": "finished" if ok else "failed", "trial_index": index * seeds + seed + 1,
                           "epochs_run": EPOCHS if ok else 0, "config_hash": f"h{index}{seed}", "num_classes": num_classes,
                           **{f"factor.{f}": v for f, v in cell.items()}, **final})
            if not ok:
                continue
            for epoch in range(EPOCHS + 1):
                epochs += [(run_id, k, epoch, v * epoch / EPOCHS) for k, v in final.items()]
            if diagnostics:
                for step in (1, 5, 10, 15):
                    values = {"diag.epoch": step / 5, "diag.lr": 0.01}
                    for k in range(3):
                        values |= {f"diag.grad_norm.layer{k}": 10.0 ** (k - 3), f"diag.weight_norm.layer{k}": 1.0 + k}
                    for k in range(2):
                        values |= {f"diag.act_mean.layer{k}": 0.5, f"diag.act_std.layer{k}": 0.1,
                                   f"diag.dead_relu.layer{k}": 0.1 * k * step / 15}
                    diag += [(run_id, key, step, v) for key, v in values.items()]
    frame = lambda rows: pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])  # noqa: E731
    return SimpleNamespace(tracking_uri="sqlite:///x.db", parent_run_id="p" * 32, experiment="exp", run_name="exp",
                           status="FINISHED", start_time=0, study_file_name=None, study_file_text=None,
                           trials=pd.DataFrame(trials), epochs=frame(epochs), diagnostics=frame(diag))


def study_of(text: str):
    import tomllib

    (study,) = parse_study_file(tomllib.loads(text), Path("s.toml"), text).studies
    return study


def pngs(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.png") if p.stat().st_size > 0}


def test_one_factor_with_many_levels_and_a_failed_level(tmp_path):
    levels = {"s": ["a", "b", "c", "d", "e", "f"]}  # more than 4 levels: wrapped facets
    record = synthetic_record(levels, seeds=3, failed={"c"})
    study = study_of("[studies.s]\nclaims = [{ level = 'f', beats = 'a' }, { level = 'c', beats = 'a' }]\n"
                     "[studies.s.levels]\n" + "".join(f"{x} = {{}}\n" for x in levels["s"]))
    folder = write_study_report(study_data(record, "s", study), tmp_path / "s")
    assert pngs(folder) == {"test_accuracy.png", "learning_curves.png", "loss_curves.png", "generalization_gap.png",
                            "grad_norms.png", "saturation.png", "activations.png"}
    index = (folder / "index.md").read_text()
    assert "level 'c': no finished seed (failed)" in index
    claims = pd.read_csv(folder / "claims.csv")
    assert claims["verdict"].tolist() == ["supported", "inconclusive"]
    html = (folder / "index.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 7


def test_three_factors_skip_the_two_factor_figures(tmp_path):
    levels = {"a": ["x", "y"], "b": ["1", "2"], "c": ["p", "q"]}
    study = study_of("[studies.s.factors.a]\nx = {}\ny = {}\n[studies.s.factors.b]\n1 = {}\n2 = {}\n"
                     "[studies.s.factors.c]\np = {}\nq = {}\n")
    folder = write_study_report(study_data(synthetic_record(levels, seeds=2), "s", study), tmp_path / "s")
    assert "interaction.png" not in pngs(folder) and "heatmap.png" not in pngs(folder)
    assert {"test_accuracy.png", "grad_norms.png", "learning_curves.png"} <= pngs(folder)
    comparisons = pd.read_csv(folder / "comparisons.csv")
    assert len(comparisons) == 3 * 4  # each factor's other level, at each of the 4 combinations of the rest


def test_without_the_study_file_or_diagnostics_the_report_says_so(tmp_path):
    record = synthetic_record({"s": ["off", "on"]}, seeds=2, diagnostics=False)
    data = study_data(record, "s", None, "the study file is not attached to the parent run")
    folder = write_study_report(data, tmp_path / "s")
    index = (folder / "index.md").read_text()
    assert "the study file is not attached to the parent run: the levels were inferred from the runs" in index
    assert "no training diagnostics were recorded" in index
    assert "grad_norms.png" not in pngs(folder) and "test_accuracy.png" in pngs(folder)
    assert pd.read_csv(folder / "summary.csv")["s"].tolist() == ["off", "on"]


@pytest.mark.parametrize("claims, problem", [
    ("[{ level = 'onn', beats = 'off' }]",
     "studies.d.claims[0].level: unknown level 'onn' of factor 'd'; did you mean 'on'? choose one of: off, on"),
    ("[{ level = 'on', beats = 'off', metric = 'test_acc' }]",
     "studies.d.claims[0].metric: unknown metric string 'test_acc'; did you mean 'test_accuracy'?"),
    ("[{ level = 'on', beats = 'on' }]", "studies.d.claims[0]: a level cannot beat itself ('on')"),
    ("[{ level = 'on' }]", "studies.d.claims[0].beats: missing"),
    ("[{ level = 'on', beats = 'off', by = 0.1 }]", "studies.d.claims[0].by: unknown key; choose one of: beats, level, metric"),
    ("'on beats off'", "studies.d.claims: expected an array of claims"),
])
def test_claims_are_validated_with_the_key_path(claims, problem):
    text = f"[studies.d]\nclaims = {claims}\n[studies.d.levels]\noff = {{}}\non = {{}}\n"
    with pytest.raises(ConfigError) as err:
        study_of(text)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_claims_of_a_two_factor_study_name_every_factor():
    base = "[studies.ad.factors.act]\nrelu = {}\nsigmoid = {}\n[studies.ad.factors.depth]\n1 = {}\n8 = {}\n"
    study = study_of("[study]\nalpha = 0.01\n[studies.ad]\nclaims = [{ level = { act = 'relu', depth = 8 }, "
                     "beats = 'act=sigmoid,depth=8', metric = 'test_loss' }]\n" + base)
    (claim,) = study.claims
    assert claim.level == {"act": "relu", "depth": "8"} and claim.beats == {"act": "sigmoid", "depth": "8"}
    assert not claim.higher_is_better and study.alpha == 0.01
    with pytest.raises(ConfigError) as err:
        study_of("[studies.ad]\nalpha = 5\nclaims = [{ level = { act = 'relu' }, beats = { act = 'tanh', depth = 8 } }]\n"
                 + base)
    assert err.value.problems == [
        "studies.ad.alpha: expected a significance level between 0 and 1 such as 0.05, got integer 5",
        "studies.ad.claims[0].level: name a level of every factor of the study (missing: depth)",
        "studies.ad.claims[0].beats.act: unknown level 'tanh' of factor 'act'; choose one of: relu, sigmoid",
    ]


def test_ten_levels_wrap_into_rows_sized_for_the_page(tmp_path):
    # 10 levels: 2 rows of 5 facets, the whole figure as wide as the page's column (1100 px at
    # 96 px per inch), so that it is shown at its natural size, text at its point size
    levels = {"s": [f"l{i}" for i in range(10)]}
    assert figures.facet_layout({f"factor.{f}": v for f, v in levels.items()})["col_wrap"] == 5
    assert figures.facet_layout({"factor.s": ["a", "b", "c", "d", "e", "f", "g"]})["col_wrap"] == 4  # 4 + 3
    data = study_data(synthetic_record(levels, seeds=2), "s", None, "no file")
    paths = [figures.learning_curves(data.epochs, data.columns, "loss", "t", tmp_path / "curves.png"),
             figures.saturation(data.diagnostics, data.columns, "t", tmp_path / "saturation.png", last_epoch=EPOCHS)]
    for path in paths:
        assert 0.75 * 1100 < css_width(path) <= 1100, path
        with Image.open(path) as image:  # 2 rows of 5: wider than high
            assert image.width > 1.3 * image.height, path
    doc = Document("t")
    doc.figure(paths[0], "curves", "")
    assert f'width="{css_width(paths[0])}"' in doc.to_html()


def test_two_factors_with_five_columns_fit_the_page(tmp_path):
    levels = {"a": ["relu", "sigmoid"], "d": ["1", "2", "4", "6", "8"]}
    data = study_data(synthetic_record(levels, seeds=2), "s", None, "no file")
    paths = [figures.learning_curves(data.epochs, data.columns, "accuracy", "t", tmp_path / "curves.png"),
             figures.activations(data.diagnostics, data.columns, "t", tmp_path / "activations.png", last_epoch=EPOCHS),
             figures.grad_norms(data.diagnostics, data.columns, "t", tmp_path / "grad_norms.png", last_epoch=EPOCHS)]
    for path in paths:
        assert 0.75 * 1100 < css_width(path) <= 1100, path


@pytest.mark.parametrize("last, ticks", [(20, [0, 5, 10, 15, 20]), (3, [0, 1, 2, 3]), (7, [0, 2, 4, 7]),
                                         (19, [0, 5, 10, 15, 19]), (40, [0, 10, 20, 30, 40]), (1, [0, 1])])
def test_epoch_axes_count_whole_epochs_up_to_the_last(last, ticks):
    assert figures.epoch_ticks(last) == ticks


def test_gradient_snapshots_are_at_whole_epochs_and_reach_the_last():
    # diagnostics at steps 1, 5, 10, 15 of 5 steps per epoch: epochs 0.2, 1, 2, 3
    data = study_data(synthetic_record({"s": ["off", "on"]}, seeds=2), "s", None, "no file")
    grads = data.diagnostics[data.diagnostics["kind"] == "grad_norm"]
    picked = figures.snapshots(grads, last=EPOCHS)
    assert list(picked["when"].cat.categories) == ["step 1 (start)", "epoch 1", "epoch 2", "epoch 3"]
    assert picked.groupby("when", observed=True)["epoch"].max().tolist() == [0.2, 1.0, 2.0, 3.0]


def test_exactly_zero_gradients_are_marked_and_named_not_dropped_from_the_log_plot(tmp_path):
    # "step": no gradient reaches layers 0 and 1 (as below a step activation); "zeros": none anywhere
    study = study_of("[studies.s.levels]\nrelu = {}\nstep = {}\nzeros = {}\n")
    record = synthetic_record({"s": ["relu", "step", "zeros"]}, seeds=2)
    diag = record.diagnostics
    grad = diag["key"].str.startswith("diag.grad_norm.")
    step_rows = diag["run_id"].str.startswith("run1-") & diag["key"].isin(["diag.grad_norm.layer0", "diag.grad_norm.layer1"])
    diag.loc[step_rows | (diag["run_id"].str.startswith("run2-") & grad), "value"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a facet with no positive value draws its marks and nothing else
        folder = write_study_report(study_data(record, "s", study), tmp_path / "s")
    index = (folder / "index.md").read_text()
    assert "**An × on the bottom edge** marks a layer whose gradient was exactly 0" in index
    assert "Here: step (layers 0, 1); zeros (layers 0, 1, 2)." in index
    assert "grad_norms.png" in pngs(folder)


def test_levels_at_chance_are_marked(tmp_path):
    levels = {"s": ["a", "b", "c"]}
    study = study_of("[studies.s.levels]\na = {}\nb = {}\nc = {}\n")
    record = synthetic_record(levels, seeds=3, accuracy={"b": 0.1, "c": 0.105}, noise=0.003, num_classes=10)
    folder = write_study_report(study_data(record, "s", study), tmp_path / "s")
    summary = pd.read_csv(folder / "summary.csv")
    assert summary["at_chance"].tolist() == [False, True, True]
    index = (folder / "index.md").read_text()
    assert re.search(r"\| b \| 3 \| 0\.1\d\d .* \| at chance \|", index)
    assert "**At chance:** 2 level(s) (b; c) end with a mean test accuracy within 0.02 of 1/10 = 0.100" in index
    assert "| b (at chance) | a | 3 vs 3 |" in index and "| c (at chance) | a | 3 vs 3 |" in index
    # the number of classes unknown (runs from before it was recorded): no claim about chance
    record = synthetic_record(levels, seeds=3, accuracy={"b": 0.1, "c": 0.105}, noise=0.003)
    assert chance_levels(study_data(record, "s", study)) == (None, [])


@pytest.mark.parametrize("noise, flagged", [(0.001, True), (0.02, False)])
def test_hedges_g_from_a_near_zero_spread_says_so(tmp_path, noise, flagged):
    # a difference of 0.05 over a spread of 0.001 gives |g| of about 50: the note says why
    study = study_of("[studies.s.levels]\noff = {}\non = {}\n")
    folder = write_study_report(study_data(synthetic_record({"s": ["off", "on"]}, seeds=3, noise=noise), "s", study),
                                tmp_path / "s")
    comparisons = pd.read_csv(folder / "comparisons.csv")
    assert (comparisons["pooled_sd"] < 0.005).tolist() == [flagged]
    index = (folder / "index.md").read_text()
    assert ("† Hedges' g is this large because the seeds barely vary" in index) == flagged
    assert (" † |" in index) == flagged


@pytest.mark.slow  # a whole study, end to end
def test_figures_drawn_in_processes_are_the_files_drawn_here_and_a_report_repeats_byte_for_byte(tmp_path):
    from dlbench.report.painter import Painter

    levels = {"a": ["relu", "sigmoid"], "d": ["1", "2"]}  # two factors: every kind of figure
    data = study_data(synthetic_record(levels, seeds=3, num_classes=10), "s", None, "no file")
    here, again = write_study_report(data, tmp_path / "here"), write_study_report(data, tmp_path / "again")
    painter = Painter(2, warm=True)
    try:
        there = write_study_report(data, tmp_path / "there", painter)
        # a figure that raises in a process raises where the report waits for it, as it would here
        batch = painter.batch(trials=1)
        batch.draw(figures.heatmap, data.trials.iloc[:0], data.columns, "no_such_metric", "t", tmp_path / "x.png")
        with pytest.raises(KeyError):
            batch.wait()
        for child in multiprocessing.active_children():  # the figure processes die (out of memory, say)
            child.kill()
            child.join()
        broken = write_study_report(data, tmp_path / "broken", painter)  # drawn in this process instead
    finally:
        painter.close()
    names = sorted(p.name for p in here.iterdir())
    assert len(pngs(here)) == 9 and names == sorted(p.name for p in there.iterdir())
    for name in names:  # strip points are jittered: from a seeded generator, the same in every process
        assert (here / name).read_bytes() == (again / name).read_bytes() == (there / name).read_bytes() \
            == (broken / name).read_bytes(), name


def header(folder: Path) -> str:
    """The report's opening line about its source (after the title and the question)."""
    return next(line for line in (folder / "index.md").read_text().splitlines() if line.startswith("From "))


def test_a_study_whose_trials_all_ended_is_complete_while_its_parent_run_still_runs(tmp_path):
    # `dlbench run` draws a study's report as soon as its trials end, while the parent run (the
    # whole study file) still runs its other studies: the report describes the study, not the parent
    study = study_of("[study]\nseeds = 3\n[studies.s.levels]\noff = {}\non = {}\n")
    record = synthetic_record({"s": ["off", "on"]}, seeds=3, failed={"on"})
    record.status = "RUNNING"
    record.trials.loc[0, "status"] = "diverged"
    line = header(write_study_report(study_data(record, "s", study), tmp_path / "s"))
    assert "running" not in line.lower() and "RUNNING" not in line
    assert "Study complete: all 6 trials ended." in line
    assert f"study run `exp` (`{'p' * 32}`, started " in line  # the parent run's name, id and start stay


def test_a_study_with_a_running_trial_is_in_progress_and_one_with_trials_missing_is_incomplete(tmp_path):
    study = study_of("[study]\nseeds = 2\n[studies.s.levels]\noff = {}\non = {}\n")
    record = synthetic_record({"s": ["off", "on"]}, seeds=2)
    record.status = "RUNNING"
    record.trials.loc[3, "status"] = "running"  # `dlbench report` of a study another process still trains
    assert "Study in progress: 3 of 4 trials ended." in header(write_study_report(study_data(record, "s", study),
                                                                                 tmp_path / "running"))
    record = synthetic_record({"s": ["off", "on"]}, seeds=2)
    record.trials = record.trials.iloc[:3]  # seed 1 of "on" never ran, and nothing runs it now
    line = header(write_study_report(study_data(record, "s", study), tmp_path / "missing"))
    assert "Study incomplete: 3 of 4 trials ended" in line


def test_levels_that_resolve_to_the_same_configuration_are_named(tmp_path):
    study = study_of("[studies.s.levels]\nbase = {}\nsame = {}\nother = {}\nalso = {}\n")
    record = synthetic_record({"s": ["base", "same", "other", "also"]}, seeds=2)
    trials = record.trials
    for level in ("same", "also"):  # both repeat the baseline: per seed the hashes of "base"
        base = trials.loc[trials["level"] == "base", "config_hash"].to_numpy()
        trials.loc[trials["level"] == level, "config_hash"] = base
    data = study_data(record, "s", study)
    note = ("levels 'base', 'same' and 'also' resolve to the same configuration (equal config hashes): their "
            "difference is zero by construction, not a finding")
    assert note in data.same and note not in data.notes  # a finding about the design, not something missing
    index = (write_study_report(data, tmp_path / "s") / "index.md").read_text()
    assert f"## Same configurations\n\n- {note}" in index
    record = synthetic_record({"s": ["base", "same"]}, seeds=2)  # distinct configs: no such note
    assert not study_data(record, "s", study_of("[studies.s.levels]\nbase = {}\nsame = {}\n")).same


def test_a_report_folder_of_another_study_file_is_refused_and_its_own_is_not(tmp_path):
    from dlbench.errors import UserError
    from dlbench.paths import REPORT_MARKER, check_report_folders

    ours, theirs = tmp_path / "a" / "ablation.toml", tmp_path / "b" / "other.toml"
    record = synthetic_record({"s": ["off", "on"]}, seeds=2)
    data = study_data(record, "s", study_of("[studies.s.levels]\noff = {}\non = {}\n"))
    data.source["study_file"] = str(theirs)
    reports = tmp_path / "reports"
    write_study_report(data, reports / "s")
    assert (reports / "s" / REPORT_MARKER).is_file()
    with pytest.raises(UserError) as err:
        check_report_folders(reports, ours, ["s", "t"], "x", doing="this run of ablation.toml")
    assert str(err.value) == (
        f"nothing was run: {reports}/s/ holds the report of study 's' of {theirs} (experiment 'exp'); this run of "
        f"ablation.toml would overwrite it. Keep both with --reports-dir {reports}/x (or another folder), or delete "
        f"{reports}/s/ to replace it.")
    check_report_folders(reports, theirs, ["s"], "exp")  # the same file again
    check_report_folders(reports, tmp_path / "b" / ".." / "b" / "other.toml", ["s"], "exp")  # spelled otherwise
    check_report_folders(tmp_path / "elsewhere", ours, ["s"], "x")  # another --reports-dir
    (reports / "s" / REPORT_MARKER).unlink()  # a report of an older dlbench: no marker, not refused
    check_report_folders(reports, ours, ["s"], "x")
