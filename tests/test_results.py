"""A study run's results as pandas DataFrames (``dlbench.load_trials``, ``load_curves``,
``load_results``; docs/results.md): one tiny study file run once in this process for the module,
its frames checked against what the store holds, every Python block of docs/results.md run
against it, and the errors each wrong call gets. One test reads the same store through a real
``mlflow server`` (slow)."""

from __future__ import annotations

import io
import math
import re

import pytest
from conftest import REPO, TINY_BASELINE, MlflowServer, copy_store, sqlite_uri, write_study

import dlbench
from dlbench.errors import UserError

DOC = REPO / "docs" / "results.md"
DOC_RUN_ID = "3f2a9c1e4b7d4e0f9a8b7c6d5e4f3a2b"  # the placeholder study run id of docs/results.md
DOC_SERVER = "http://127.0.0.1:5000"  # and its server

# the docs' ablation.toml in small: a one-factor study and a two-factor one whose relu/depth=1 level
# is the dropout study's "off" (relu is the default activation): recorded, not trained (same_as)
STUDY = """\
[study]
name = "results-test"
seeds = 2

""" + TINY_BASELINE + """
[studies.dropout.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_hidden = 0.2 }] }

[studies.activation_depth.factors.activation]
relu = { activation = "relu" }
sigmoid = { activation = "sigmoid" }

[studies.activation_depth.factors.depth]
1 = { architecture = { depth = 1 } }
2 = { architecture = { depth = 2 } }
"""
SEEDS, EPOCHS = 2, 2
LEVELS = {"dropout": ["off", "on"],
          "activation_depth": ["relu, depth=1", "relu, depth=2", "sigmoid, depth=1", "sigmoid, depth=2"]}


class Ran:
    """The study file, its store and what MLflow holds of its one study run."""

    def __init__(self, folder, uri, parent, runs):
        self.folder, self.uri, self.parent, self.runs = folder, uri, parent, runs  # runs: the trial runs by id


@pytest.fixture(scope="module")
def ran(tmp_path_factory, mlflow_template) -> Ran:
    from mlflow.tracking import MlflowClient

    from dlbench.config import read_study_file
    from dlbench.plugins import load_plugins
    from dlbench.runner import run_study
    from dlbench.settings import RunOptions
    from dlbench.study import expand

    folder = tmp_path_factory.mktemp("results")
    sf = read_study_file(write_study(folder, STUDY, "ablation.toml"))
    uri = sqlite_uri(copy_store(mlflow_template, folder))
    plugins = load_plugins(None, autoload=False)
    options = RunOptions(device="cpu", tracking_uri=uri, reports_dir=folder / "reports", jobs=1,
                         checkpoint_dir=folder / "ckpt")
    run = run_study(sf, expand(sf, plugins.registry), plugins, options, io.StringIO())
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(sf.name).experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([experiment]) if r.data.tags.get("dlbench.role") == "trial"}
    return Ran(folder, uri, run.parent_run_id, runs)


@pytest.fixture
def in_folder(ran, monkeypatch):
    """The working directory is the study's folder and the store its default ./mlflow.db, as for a
    user who ran `dlbench run ablation.toml` there."""
    monkeypatch.chdir(ran.folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return ran


# -- the trials -----------------------------------------------------------------------------------


def test_one_row_per_trial_with_its_factors_metrics_and_identity(ran):
    trials = dlbench.load_trials(ran.folder / "ablation.toml", tracking_uri=ran.uri)
    assert len(trials) == sum(len(lv) for lv in LEVELS.values()) * SEEDS == len(ran.runs)
    assert sorted(trials["run_id"]) == sorted(ran.runs)  # the study run's children, each once
    assert list(trials.columns[:6]) == ["study", "level", "dropout", "activation", "depth", "seed"]
    for column in ["status", "test_accuracy", "val_accuracy", "train_accuracy", "test_loss", "val_loss",
                   "train_loss", "lr", "epochs_run", "same_as", "run_id", "run_name", "config_hash", "study_run_id"]:
        assert column in trials, column
    assert not any(c.startswith("factor.") for c in trials)
    assert (trials["study_run_id"] == ran.parent).all()
    assert trials.attrs["study_run_id"] == ran.parent and trials.attrs["tracking_uri"] == ran.uri
    # in the study file's order: study, level, seed
    assert list(dict.fromkeys(trials["study"])) == list(LEVELS)
    for study, levels in LEVELS.items():
        rows = trials[trials["study"] == study]
        assert list(dict.fromkeys(rows["level"])) == levels
        assert list(rows["seed"]) == [s for _ in levels for s in range(SEEDS)]
    assert trials["seed"].dtype.kind == "i"

    for _, row in trials.iterrows():
        run = ran.runs[row["run_id"]]
        tags = run.data.tags
        assert (row["study"], row["level"], str(row["seed"])) == (
            tags["dlbench.study"], tags["dlbench.level"], tags["dlbench.seed"])
        assert row["run_name"] == run.info.run_name == f"{row['level']}, seed={row['seed']}"
        assert row["config_hash"] == tags["dlbench.config_hash"]
        assert row["status"] == "finished" and row["epochs_run"] == EPOCHS
        for metric, value in run.data.metrics.items():  # the final value of every metric the run logged
            if not metric.startswith("diag"):
                assert row[metric] == pytest.approx(value, abs=0, rel=0), metric
        # the factors, split out of the level's label
        if row["study"] == "dropout":
            assert row["dropout"] == row["level"] and _missing(row["activation"]) and _missing(row["depth"])
        else:
            assert row["level"] == f"{row['activation']}, depth={row['depth']}"
            assert _missing(row["dropout"])


def test_a_trial_recorded_from_an_identical_one_is_a_row_naming_it(ran):
    trials = dlbench.load_trials(ran.folder / "ablation.toml", tracking_uri=ran.uri)
    records = trials[trials["same_as"] != ""]
    assert sorted(records["run_name"]) == [f"relu, depth=1, seed={s}" for s in range(SEEDS)]
    for _, row in records.iterrows():
        origin = trials[trials["study"] + "/" + trials["run_name"] == row["same_as"]].iloc[0]
        assert origin["level"] == "off" and origin["seed"] == row["seed"]
        assert row["test_accuracy"] == origin["test_accuracy"] and row["config_hash"] == origin["config_hash"]
        assert ran.runs[row["run_id"]].data.tags["dlbench.same_as"] == origin["run_id"]


def test_by_file_by_run_id_and_latest_give_the_same_frame(ran):
    by_file = dlbench.load_trials(str(ran.folder / "ablation.toml"), tracking_uri=ran.uri)
    by_id = dlbench.load_trials(run_id=ran.parent, tracking_uri=ran.uri)
    latest = dlbench.load_trials(tracking_uri=ran.uri)
    assert by_file.equals(by_id) and by_file.equals(latest)


def test_the_default_store_is_mlflow_db_in_the_working_directory(in_folder):
    assert dlbench.load_trials("ablation.toml").attrs["study_run_id"] == in_folder.parent


def test_one_study_and_the_groupby_of_the_readme(ran):
    trials = dlbench.load_trials(ran.folder / "ablation.toml", tracking_uri=ran.uri, study="dropout")
    assert set(trials["study"]) == {"dropout"} and len(trials) == 2 * SEEDS
    means = trials.groupby(["study", "level"]).test_accuracy.agg(["mean", "std", "count"])
    assert list(means.index) == [("dropout", "off"), ("dropout", "on")]
    off = [ran.runs[r].data.metrics["test_accuracy"] for r in trials[trials["level"] == "off"]["run_id"]]
    assert means.loc[("dropout", "off"), "mean"] == pytest.approx(sum(off) / len(off))
    assert (means["count"] == SEEDS).all()


# -- the curves -----------------------------------------------------------------------------------


def test_curves_have_every_epoch_of_every_trial_as_the_store_holds_them(ran):
    from mlflow.tracking import MlflowClient

    curves = dlbench.load_curves(ran.folder / "ablation.toml", tracking_uri=ran.uri)
    assert list(curves.columns) == ["study", "level", "dropout", "activation", "depth", "seed", "epoch", "metric",
                                    "value", "run_id"]
    assert curves["epoch"].dtype.kind == "i"
    assert set(curves["run_id"]) == set(ran.runs)
    for run_id, rows in curves.groupby("run_id"):
        assert set(rows["metric"]) >= {"train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "val_loss",
                                       "test_loss"}
        for metric, curve in rows.groupby("metric"):
            assert list(curve["epoch"]) == list(range(EPOCHS + 1)), (run_id, metric)  # 0: the initialized model
    client = MlflowClient(ran.uri)
    run_id = next(iter(ran.runs))
    stored = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_accuracy"))
    mine = curves[(curves["run_id"] == run_id) & (curves["metric"] == "val_accuracy")]
    assert list(zip(mine["epoch"], mine["value"])) == stored
    # the last epoch is the trial's final metric
    trials = dlbench.load_trials(run_id=ran.parent, tracking_uri=ran.uri)
    last = curves[curves["epoch"] == EPOCHS].pivot_table(index="run_id", columns="metric", values="value")
    for _, row in trials.iterrows():
        assert last.loc[row["run_id"], "test_accuracy"] == row["test_accuracy"]


def test_curves_of_some_metrics_of_one_study_and_both_frames_at_once(ran):
    curves = dlbench.load_curves(run_id=ran.parent, tracking_uri=ran.uri, study="activation_depth",
                                 metrics="val_accuracy")
    assert set(curves["metric"]) == {"val_accuracy"} and set(curves["study"]) == {"activation_depth"}
    assert len(curves) == 4 * SEEDS * (EPOCHS + 1)
    both = dlbench.load_results(ran.folder / "ablation.toml", tracking_uri=ran.uri, study="activation_depth",
                                metrics=["val_accuracy"])
    assert both.curves.equals(curves) and both.study_run_id == ran.parent and both.experiment == "results-test"
    assert both.trials.equals(dlbench.load_trials(run_id=ran.parent, tracking_uri=ran.uri, study="activation_depth"))


# -- the errors -----------------------------------------------------------------------------------


def test_no_store_is_said_and_none_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_study(tmp_path, STUDY, "ablation.toml")
    with pytest.raises(UserError, match=r"no MLflow tracking store at sqlite:///mlflow.db: .*mlflow.db does not "
                                        r"exist.*working directory"):
        dlbench.load_trials("ablation.toml")
    assert not (tmp_path / "mlflow.db").exists()  # MLflow would have made an empty one
    with pytest.raises(UserError, match="no MLflow tracking store"):
        dlbench.load_curves(run_id=DOC_RUN_ID, tracking_uri=sqlite_uri(tmp_path / "elsewhere" / "mlflow.db"))


def test_a_server_that_does_not_answer_is_said():
    with pytest.raises(UserError, match=r"tracking_uri=http://127.0.0.1:9: no MLflow tracking server answers"):
        dlbench.load_trials(tracking_uri="http://127.0.0.1:9")


def test_a_study_file_never_run_in_the_store(ran, tmp_path):
    other = write_study(tmp_path, STUDY.replace('name = "results-test"', 'name = "never-run"'), "other.toml")
    with pytest.raises(UserError, match=r"other.toml: no study run of this study file \(MLflow experiment "
                                        r"'never-run'\) in .*dlbench run"):
        dlbench.load_trials(other, tracking_uri=ran.uri)


def test_a_missing_study_file_is_said(ran, tmp_path):
    with pytest.raises(UserError, match="nope.toml"):
        dlbench.load_trials(tmp_path / "nope.toml", tracking_uri=ran.uri)


def test_an_unknown_run_id(ran):
    with pytest.raises(UserError, match=f"run_id='{DOC_RUN_ID}': no such run in {re.escape(ran.uri)}"):
        dlbench.load_trials(run_id=DOC_RUN_ID, tracking_uri=ran.uri)


def test_a_trial_run_id_is_refused_naming_its_study_run(ran):
    trial = next(iter(ran.runs.values()))
    with pytest.raises(UserError, match=rf"run_id='{trial.info.run_id}' is a trial run \({re.escape(trial.info.run_name)}"
                                        rf"\), not a study run. Its study run is run_id='{ran.parent}'"):
        dlbench.load_curves(run_id=trial.info.run_id, tracking_uri=ran.uri)


def test_a_file_and_a_run_id_at_once_unknown_study_and_unknown_metric(ran):
    with pytest.raises(UserError, match="not both"):
        dlbench.load_trials(ran.folder / "ablation.toml", run_id=ran.parent, tracking_uri=ran.uri)
    with pytest.raises(UserError, match="study='dropot'.*did you mean 'dropout'"):
        dlbench.load_trials(run_id=ran.parent, tracking_uri=ran.uri, study="dropot")
    with pytest.raises(UserError, match="metrics: 'val_acc' is not a metric.*did you mean 'val_accuracy'"):
        dlbench.load_curves(run_id=ran.parent, tracking_uri=ran.uri, metrics=["val_acc"])


# -- the docs -------------------------------------------------------------------------------------


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


def test_every_python_block_of_the_docs_runs(in_folder):
    """In order, in one namespace, in the folder of a study run as the page assumes (a server's
    blocks: the slow test below)."""
    blocks = doc_blocks()
    assert len(blocks) >= 8
    namespace: dict = {}
    ran_blocks = 0
    for block in blocks:
        if DOC_SERVER in block:
            continue
        exec(compile(block.replace(DOC_RUN_ID, in_folder.parent), str(DOC), "exec"), namespace)
        ran_blocks += 1
    assert ran_blocks >= 7
    assert (in_folder.folder / "dropout_val_accuracy.png").stat().st_size > 1000  # the seaborn figure
    summary = namespace["summary"]
    assert list(summary.columns) == ["count", "mean", "std", "ci95_low", "ci95_high"]
    assert ((summary["ci95_low"] <= summary["mean"]) & (summary["mean"] <= summary["ci95_high"])).all()
    assert namespace["table"].shape == (2, 2)  # depth x activation


def test_the_public_names_load_lazily():
    from dlbench import results

    for name in ("load_trials", "load_curves", "load_results", "Results"):
        assert name in dlbench.__all__ and getattr(dlbench, name) is getattr(results, name)


# -- a server -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.server
def test_a_server_gives_the_frames_sqlite_gives(ran, tmp_path, monkeypatch):
    """A real `mlflow server` over a copy of the study's store: the same frames over HTTP, and the
    server blocks of the docs run."""
    import shutil

    folder = tmp_path / "server"
    folder.mkdir()
    store = folder / "mlflow.db"
    shutil.copyfile(ran.folder / "mlflow.db", store)
    server = MlflowServer(folder, store).start()
    try:
        local = dlbench.load_results(ran.folder / "ablation.toml", tracking_uri=ran.uri)
        remote = dlbench.load_results(ran.folder / "ablation.toml", tracking_uri=server.uri)
        assert remote.trials.drop(columns="study_run_id").equals(local.trials.drop(columns="study_run_id"))
        assert remote.curves.equals(local.curves) and remote.study_run_id == ran.parent
        trial = next(iter(ran.runs))
        with pytest.raises(UserError, match="is a trial run"):
            dlbench.load_trials(run_id=trial, tracking_uri=server.uri)
        monkeypatch.chdir(ran.folder)
        namespace: dict = {"dlbench": dlbench}
        served = [b for b in doc_blocks() if DOC_SERVER in b]
        assert served
        for block in served:
            code = block.replace(DOC_SERVER, server.uri).replace(DOC_RUN_ID, ran.parent)
            exec(compile(code, str(DOC), "exec"), namespace)
        assert namespace["trials"].equals(local.trials.assign(study_run_id=ran.parent))
    finally:
        server.kill()


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
