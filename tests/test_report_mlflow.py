"""Reports rebuilt from a real MLflow store: `dlbench run` and `dlbench report` in subprocesses.

One study file, run once for the module: a one-factor study with a claim, a two-factor study, a
study whose second level fails (a local plugin raises) and a single-seed study. The tests read
the report folders, the store and the parent run's artifacts.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from conftest import cli_env, describe_result, run_cli, sqlite_uri, write_plugin, write_study

from dlbench.report import report_from_mlflow
from dlbench.tracking.reader import find_study_run

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

STUDY = """\
[study]
name = "reports"
seeds = 2

[baseline]
dataset = { name = "mnist1d", num_samples = 600 }
architecture = { name = "mlp", width = 16, depth = 1 }
optimizer = { name = "adam", lr = 0.01 }
epochs = 2
batch_size = 64
diagnostics_every = 3

[studies.dropout]
question = "Does dropout help a small MLP?"
claims = [{ level = "on", beats = "off" }]
[studies.dropout.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_hidden = 0.2 }] }

[studies.act_depth]
claims = [{ level = { activation = "relu", depth = 2 }, beats = "activation=tanh,depth=2", metric = "test_loss" }]
[studies.act_depth.factors.activation]
relu = { activation = "relu" }
tanh = { activation = "tanh" }
[studies.act_depth.factors.depth]
1 = { architecture = { depth = 1 } }
2 = { architecture = { depth = 2 } }

[studies.broken.levels]
ok = {}
boom = { initializer = "boom" }

[studies.single]
seeds = [0]
claims = [{ level = "b", beats = "a" }]
[studies.single.levels]
a = {}
b = { architecture = { width = 8 } }
"""

BOOM_PLUGIN = """\
from dlbench import hookimpl


def boom(model, data):
    \"\"\"An initializer that fails on the study's data (tests); the preflight's tiny batch passes.\"\"\"
    if len(data.y_train) > 100:
        raise RuntimeError("boom: this level always fails")


@hookimpl
def dlbench_register_initializers(register):
    register("boom", boom)
"""

FIGURES = ["test_accuracy.png", "learning_curves.png", "loss_curves.png", "generalization_gap.png",
           "grad_norms.png", "saturation.png", "activations.png"]
TABLES = ["summary", "comparisons"]
DATA = ["trials.csv", "epochs.csv", "diagnostics.csv"]
REBUILT = ["act_depth", "broken"]  # `dlbench report` rebuilds these (each report takes seconds)


class StudyRun:
    def __init__(self, root: Path):
        self.root = root
        self.study = write_study(root, STUDY)
        write_plugin(root, "boom", BOOM_PLUGIN)
        self.uri = sqlite_uri(root / "mlflow.db")
        self.proc = run_cli(["run", self.study, "--tracking-uri", self.uri, "--device", "cpu"], cwd=root,
                            env=cli_env(autoload=False))
        match = re.search(r"MLflow parent run: ([0-9a-f]{32})", self.proc.stdout)
        self.parent_id = match.group(1) if match else None
        self.rebuilt = run_cli(["report", "--run-id", self.parent_id, "--tracking-uri", self.uri, "--reports-dir",
                                "rebuilt", *[a for s in REBUILT for a in ("--study", s)]], cwd=root,
                               env=cli_env(autoload=False))

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def folder(self, study: str, rebuilt: bool = False) -> Path:
        return self.root / ("rebuilt" if rebuilt else "reports") / study


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> StudyRun:
    run = StudyRun(tmp_path_factory.mktemp("reports"))
    assert run.proc.returncode == 1, describe_result(run.proc)  # the failing level fails the run ...
    assert run.parent_id, describe_result(run.proc)
    assert run.rebuilt.returncode == 0, describe_result(run.rebuilt)  # ... and the reports are still built
    return run


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_run_and_report_print_the_report_folders(done):
    for study in ("dropout", "act_depth", "broken", "single"):
        assert f"report: reports/{study}/index.md" in done.proc.stdout
        assert (f"report: rebuilt/{study}/index.md" in done.rebuilt.stdout) == (study in REBUILT)
    assert "Traceback" not in done.proc.stdout + done.rebuilt.stderr
    assert f"from MLflow study run {done.parent_id}" in done.rebuilt.stdout


@pytest.mark.parametrize("study, extra, rebuilt", [
    ("dropout", ["claims"], False),
    ("act_depth", ["claims", "interaction.png", "heatmap.png"], False),
    ("act_depth", ["claims", "interaction.png", "heatmap.png"], True),
])
def test_every_file_is_written(done, study, extra, rebuilt):
    folder = done.folder(study, rebuilt)
    tables = TABLES + [e for e in extra if not e.endswith(".png")]
    names = (["index.md", "index.html"] + FIGURES + [e for e in extra if e.endswith(".png")] + DATA
             + [f"{t}.{ext}" for t in tables for ext in ("csv", "md", "tex")])
    for name in names:
        path = folder / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
            assert f"]({name})" in (folder / "index.md").read_text(encoding="utf-8")
    assert (folder / "summary.tex").read_text().startswith("\\begin{table}")


def test_report_rebuilt_from_mlflow_alone_matches_the_run(done):
    for study in REBUILT:
        for name in ("summary.csv", "comparisons.csv", "claims.csv", "trials.csv", "epochs.csv"):
            if study == "broken" and name == "claims.csv":
                continue
            assert read_csv(done.folder(study) / name) == read_csv(done.folder(study, True) / name), (study, name)


def test_html_is_self_contained(done):
    html = (done.folder("act_depth") / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in html and "<link" not in html
    pngs = list(done.folder("act_depth").glob("*.png"))
    assert len(sources) == len(pngs)
    assert "<table>" in html and "Hedges" in html


def test_statistics_tables(done):
    summary = read_csv(done.folder("act_depth") / "summary.csv")
    assert [(r["activation"], r["depth"]) for r in summary] == [("relu", "1"), ("relu", "2"), ("tanh", "1"),
                                                                  ("tanh", "2")]
    assert all(int(r["n"]) == 2 and int(r["not_run"]) == 0 for r in summary)
    comparisons = read_csv(done.folder("act_depth") / "comparisons.csv")
    assert len(comparisons) == 4  # tanh vs relu at each depth, depth 2 vs 1 for each activation
    for row in comparisons:
        assert float(row["ci95_low"]) <= float(row["diff"]) <= float(row["ci95_high"])
        assert float(row["p"]) <= float(row["p_holm"]) <= 1.0
    (claim,) = read_csv(done.folder("act_depth") / "claims.csv")
    # a claim names its factors (Claim.__str__: level_label without the study's level names)
    assert claim["claim"] == "activation=relu, depth=2 beats activation=tanh, depth=2 on test_loss"
    assert claim["verdict"] in {"supported", "contradicted", "inconclusive"}
    assert claim["higher_is_better"] == "False"
    index = (done.folder("act_depth") / "index.md").read_text()
    assert f"**{claim['verdict']}**" in index and claim["why"] in index


def test_failed_level_is_reported_as_missing(done):
    folder = done.folder("broken")
    summary = {r["broken"]: r for r in read_csv(folder / "summary.csv")}
    assert int(summary["ok"]["n"]) == 2 and int(summary["boom"]["n"]) == 0 and int(summary["boom"]["failed"]) == 2
    index = (folder / "index.md").read_text()
    assert "## What is missing" in index
    assert "2 trial(s) did not finish and are not in n: boom seed 0 (failed), boom seed 1 (failed)" in index
    assert "level 'boom': no finished seed (failed)" in index
    assert "could not be tested" in index
    for name in ("test_accuracy.png", "learning_curves.png", "grad_norms.png"):
        assert (folder / name).stat().st_size > 0


def test_single_seed_study_says_what_it_cannot_tell(done):
    folder = done.folder("single")
    index = (folder / "index.md").read_text()
    assert "every level has at most one finished seed: no intervals, no tests" in index
    (claim,) = read_csv(folder / "claims.csv")
    assert claim["verdict"] == "inconclusive"
    assert claim["why"].startswith("cannot test: 'b' has 1 and 'a' has 1 finished seed(s)")
    summary = read_csv(folder / "summary.csv")
    assert [int(r["n"]) for r in summary] == [1, 1] and all(r["std"] == "" for r in summary)


def test_diagnostics_are_logged_by_optimizer_step(done):
    client = done.client()
    exp = client.get_experiment_by_name("reports")
    (child,) = client.search_runs([exp.experiment_id], "tags.`mlflow.runName` = 'tanh, depth=2, seed=1' and "
                                  "tags.`dlbench.study` = 'act_depth'")
    keys = set(child.data.metrics)
    # one section of the UI's charts (the part before "/"), whose name says what its step counts
    assert {"diag per step/grad_norm.layer0", "diag per step/grad_norm.layer2", "diag per step/act_saturation.layer1",
            "diag per step/weight_norm.layer2", "diag per step/act_mean.layer0", "diag per step/act_std.layer1",
            "diag per step/epoch"} <= keys
    assert not any(k.startswith("diag per step/dead_relu") for k in keys)
    # the headline metrics and nothing else outside the diagnostics section: lr once, per epoch
    assert {k for k in keys if "/" not in k} == {"train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                                  "test_loss", "test_accuracy", "lr"}
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "diag per step/grad_norm.layer0"))
    epochs = sorted(m.step for m in client.get_metric_history(child.info.run_id, "test_accuracy"))
    assert steps[:3] == [1, 3, 6] and epochs == [0, 1, 2]
    rows = read_csv(done.folder("act_depth") / "diagnostics.csv")
    assert {r["kind"] for r in rows} >= {"grad_norm", "weight_norm", "act_mean", "act_std", "act_saturation",
                                         "dead_relu"}


def test_a_store_with_the_older_diagnostics_names_reads_the_same(done, tmp_path):
    # stores written before the "diag per step/" section named them diag.<kind>...: still read, as the same
    import shutil
    import sqlite3

    from dlbench.tracking.reader import read_study_run

    old = tmp_path / "old.db"
    shutil.copy(done.root / "mlflow.db", old)
    with sqlite3.connect(old) as db:
        for table in ("metrics", "latest_metrics"):
            db.execute(f"UPDATE {table} SET key = replace(key, 'diag per step/', 'diag.')")
        assert db.execute("SELECT count(*) FROM metrics WHERE key LIKE 'diag.%'").fetchone()[0] > 0
    now = read_study_run(done.uri, done.parent_id, studies=["act_depth"])
    before = read_study_run(sqlite_uri(old), done.parent_id, studies=["act_depth"])
    assert len(now.diagnostics) > 0
    assert before.diagnostics.equals(now.diagnostics) and before.epochs.equals(now.epochs)
    assert before.trials.equals(now.trials)


def test_reports_are_attached_to_the_parent_run(done):
    paths = {a.path for a in done.client().list_artifacts(done.parent_id, "reports/act_depth")}
    for name in ["index.html", "index.md", "heatmap.png", "claims.csv", "comparisons.tex", *FIGURES]:
        assert f"reports/act_depth/{name}" in paths, name


def test_a_rerun_reports_the_trials_it_skipped_and_is_the_latest(done):
    # `run --study dropout` is a new study run whose trials all finished before: it records each
    # under itself from its earlier run (dlbench.same_as, said on one line), and reports them
    proc = run_cli(["run", done.study, "--study", "dropout", "--tracking-uri", done.uri, "--device", "cpu",
                    "--reports-dir", "again"], cwd=done.root, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert "trials reused from earlier study runs" in proc.stdout and "report: again/dropout/index.md" in proc.stdout
    parent = re.search(r"MLflow parent run: ([0-9a-f]{32})", proc.stdout).group(1)
    assert parent != done.parent_id
    assert read_csv(done.root / "again" / "dropout" / "summary.csv") == read_csv(done.folder("dropout") / "summary.csv")
    assert sorted(p.name for p in (done.root / "again").iterdir()) == ["dropout"]
    # STUDY_FILE: the latest study run of its experiment, i.e. this one
    proc = run_cli(["report", done.study, "--tracking-uri", done.uri, "--reports-dir", "latest", "--no-attach"],
                   cwd=done.root, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert f"from MLflow study run {parent}" in proc.stdout
    assert read_csv(done.root / "latest" / "dropout" / "claims.csv") == read_csv(done.folder("dropout") / "claims.csv")


def test_report_mistakes_are_usage_errors(done):
    proc = run_cli(["report", "--tracking-uri", done.uri, "--experiment", "reprots"], cwd=done.root,
                   env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    assert "--experiment 'reprots': no such MLflow experiment" in proc.stderr and "did you mean 'reports'?" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("call, message", [
    (lambda uri, parent, child: find_study_run(uri, run_id="0" * 32), "no such run"),
    (lambda uri, parent, child: find_study_run(uri, run_id=child), "is the trial run 'off, seed=0'"),
    (lambda uri, parent, child: report_from_mlflow(uri, parent, Path("unused"), ["dropuot"]),
     "--study 'dropuot': the study run"),
])
def test_report_mistakes_name_the_fix(done, call, message):
    from dlbench.errors import UserError

    client = done.client()
    exp = client.get_experiment_by_name("reports")
    (child,) = client.search_runs([exp.experiment_id], "tags.`mlflow.runName` = 'off, seed=0' and tags.`dlbench.study` = 'dropout' and "
                                  f"tags.`mlflow.parentRunId` = '{done.parent_id}'")
    with pytest.raises(UserError) as err:
        call(done.uri, done.parent_id, child.info.run_id)
    assert message in str(err.value)
    if "trial run" in message:
        assert f"--run-id {done.parent_id}" in str(err.value)
