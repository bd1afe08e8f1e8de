"""The Tuning section of a report, read back from a real MLflow store (issue 12).

The tuning runs and final trials are written straight into a SQLite store as the contract of
issue 12 has them (tags and per-epoch metrics, children of one study run with the study file
attached): no training, so the module takes seconds. The attached study file has no ``tune``
table: the report works from the runs' tags alone.

Three studies in one study run:

* ``dropout``: two levels tuned unequally: ``off`` 4 trials in one stage, with its own space and a
  failed trial; ``on`` 6 trials in two stages, a pruned trial, its choice (lr = 0.0981) on the high
  edge of its log range. The final trials say what they chose (``dlbench.tuned``).
* ``same``: two levels tuned alike on val_loss (lower is better); the final trials carry no
  ``dlbench.tuned``, so the choice is the contract's best trial (a pruned trial's better value
  is not taken, a tie goes to the lower trial number).
* ``plain``: not tuned.
"""

from __future__ import annotations

import hashlib
import json
import math

import pandas as pd
import pytest
from conftest import TINY_BASELINE, cli_env, copy_store, describe_result, run_cli, sqlite_uri

from dlbench.report import report_from_mlflow
from dlbench.report.tuning import edge
from dlbench.report.tuning_figures import best_so_far
from dlbench.tracking.reader import read_study_run

STUDY = TINY_BASELINE + """
[study]
name = "tuned"
seeds = 2

[studies.dropout.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_hidden = 0.2 }] }

[studies.same.levels]
a = {}
b = { activation = "tanh" }

[studies.plain.levels]
a = {}
b = { activation = "tanh" }
"""

LOG_LR = {"kind": "log_uniform", "low": 1e-4, "high": 0.1, "log": True}
OFF_LR = {"kind": "log_uniform", "low": 1e-5, "high": 0.1, "log": True}  # level 'off' declares its own
SAME_SPACE = {"optimizer.lr": {"kind": "uniform", "low": 0.001, "high": 0.1, "log": False},
              "architecture.width": {"kind": "int", "low": 8, "high": 64, "log": False}}

# study -> level -> (strategy, metric, space, [(trial, stage, status, epochs, objective, params)])
SEARCHES = {
    "dropout": {
        "off": ("tpe", "val_accuracy", {"optimizer.lr": OFF_LR}, [
            (1, 1, "finished", 2, 0.60, {"optimizer.lr": 0.001}),
            (2, 1, "failed", 1, 0.10, {"optimizer.lr": 0.09}),
            (3, 1, "finished", 2, 0.72, {"optimizer.lr": 0.01}),
            (4, 1, "finished", 2, 0.65, {"optimizer.lr": 0.003}),
        ]),
        "on": ("tpe", "val_accuracy", {"optimizer.lr": LOG_LR}, [
            (1, 1, "finished", 2, 0.55, {"optimizer.lr": 0.002}),
            (2, 1, "pruned", 1, 0.30, {"optimizer.lr": 0.0002}),
            (3, 1, "finished", 2, 0.70, {"optimizer.lr": 0.08}),
            (4, 1, "finished", 2, 0.62, {"optimizer.lr": 0.03}),
            (5, 2, "finished", 4, 0.74, {"optimizer.lr": 0.07}),
            (6, 2, "finished", 4, 0.78, {"optimizer.lr": 0.0981}),
        ]),
    },
    "same": {
        "a": ("random", "val_loss", SAME_SPACE, [
            (1, 1, "finished", 2, 0.90, {"optimizer.lr": 0.002, "architecture.width": 9}),
            (2, 1, "pruned", 1, 0.20, {"optimizer.lr": 0.099, "architecture.width": 64}),  # better, but pruned
            (3, 1, "finished", 2, 0.80, {"optimizer.lr": 0.05, "architecture.width": 32}),
        ]),
        "b": ("random", "val_loss", SAME_SPACE, [
            (1, 1, "finished", 2, 0.70, {"optimizer.lr": 0.02, "architecture.width": 16}),
            (2, 1, "finished", 2, 0.70, {"optimizer.lr": 0.04, "architecture.width": 24}),  # a tie: trial 1 wins
            (3, 1, "diverged", 1, math.nan, {"optimizer.lr": 0.09, "architecture.width": 40}),
        ]),
    },
}
CHOSEN = {("dropout", "off"): (0.01, 3), ("dropout", "on"): (0.0981, 6)}  # what the final trials say
SEEDS = (0, 1)


class Store:
    """A study run with its tuning runs and final trials, written the way dlbench writes them."""

    def __init__(self, root, template):
        from mlflow.tracking import MlflowClient

        self.root = root
        self.uri = sqlite_uri(copy_store(template, root))
        self.client = MlflowClient(self.uri)
        self.experiment = self.client.create_experiment("tuned", artifact_location=(root / "mlruns").as_uri())
        study_file = root / "study.toml"
        study_file.write_text(STUDY, encoding="utf-8")
        self.parent = self.client.create_run(self.experiment, run_name="tuned", tags={
            "dlbench.role": "study", "dlbench.study_file": str(study_file)}).info.run_id
        self.client.log_param(self.parent, "studies", json.dumps(["dropout", "same", "plain"]))
        self.client.log_text(self.parent, STUDY, "study.toml")
        self.tuning_ids: dict[str, list[str]] = {}
        index = 0
        for study in ("dropout", "same", "plain"):
            for n, level in enumerate(("off", "on") if study == "dropout" else ("a", "b")):
                search = hashlib.sha256(f"{study}/{level}".encode()).hexdigest()[:16]
                if study in SEARCHES:
                    self._search(study, level, search)
                for seed in SEEDS:
                    index += 1
                    self._final(study, level, seed, index, search if study in SEARCHES else None, 0.6 + 0.1 * n)
        self.client.set_terminated(self.parent, "FINISHED")

    def _child(self, tags: dict, history: dict[str, list[float]], status: str) -> str:
        from mlflow.entities import Metric

        run = self.client.create_run(self.experiment, tags={"mlflow.parentRunId": self.parent, **tags})
        metrics = [Metric(key, value, 0, step) for key, values in history.items() for step, value in enumerate(values)]
        self.client.log_batch(run.info.run_id, metrics=metrics)
        self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    @staticmethod
    def _labels(study: str, level: str, seed: int, status: str, epochs: int) -> dict[str, str]:
        return {"dlbench.study": study, "dlbench.level": level, "dlbench.levels": json.dumps({study: level}),
                f"dlbench.factor.{study}": level, "dlbench.seed": str(seed), "dlbench.status": status,
                "dlbench.epochs_run": str(epochs), "dlbench.config_hash": f"{study}-{level}-{seed}"}

    def _search(self, study: str, level: str, search: str) -> None:
        strategy, metric, space, trials = SEARCHES[study][level]
        for trial, stage, status, epochs, objective, params in trials:
            tags = self._labels(study, level, 0, status, epochs) | {
                "dlbench.role": "tuning", "dlbench.search": search, "dlbench.tuning.stage": str(stage),
                "dlbench.tuning.trial": str(trial), "dlbench.tuning.params": json.dumps(params),
                "dlbench.tuning.space": json.dumps(space), "dlbench.tuning.metric": metric,
                "dlbench.tuning.strategy": strategy, "dlbench.tuning.budget": str(len(trials)),
                "dlbench.trial_index": str(trial), "dlbench.config_hash": f"{search}-{trial}"}
            # the objective is the last logged value; earlier epochs were worse
            values = [] if objective != objective else [objective * e / epochs for e in range(epochs + 1)]
            history = {metric: values}
            mlflow_status = "FINISHED" if status in ("finished", "pruned") else "FAILED"
            self.tuning_ids.setdefault(study, []).append(self._child(tags, history, mlflow_status))

    def _final(self, study: str, level: str, seed: int, index: int, search: str | None, accuracy: float) -> None:
        tags = self._labels(study, level, seed, "finished", 2) | {"dlbench.role": "trial",
                                                                  "dlbench.trial_index": str(index)}
        if search:
            tags["dlbench.search"] = search
        if (study, level) in CHOSEN:
            lr, trial = CHOSEN[study, level]
            tags |= {"dlbench.tuned": json.dumps({"optimizer.lr": lr}), "dlbench.tuned_from": str(trial)}
        acc = accuracy + 0.01 * seed
        history = {f"{split}_{q}": [v * e / 2 for e in range(3)] for split in ("train", "val", "test")
                   for q, v in (("accuracy", acc), ("loss", 2 - acc))}
        self._child(tags, history, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template) -> Store:
    return Store(tmp_path_factory.mktemp("tuned"), mlflow_template)


@pytest.fixture(scope="module")
def reports(store):
    folders = report_from_mlflow(store.uri, store.parent, store.root / "reports", attach=False)
    assert [f.name for f in folders] == ["dropout", "same", "plain"]
    return store.root / "reports"


def index(reports, study: str) -> str:
    return (reports / study / "index.md").read_text(encoding="utf-8")


def test_reader_gives_the_tuning_runs_and_the_final_trials_choice(store):
    record = read_study_run(store.uri, store.parent)
    tuning = record.tuning
    assert sorted(tuning["run_id"]) == sorted(store.tuning_ids["dropout"] + store.tuning_ids["same"])
    on = tuning[(tuning["study"] == "dropout") & (tuning["level"] == "on")]
    assert on["trial"].tolist() == [1, 2, 3, 4, 5, 6] and on["stage"].tolist() == [1, 1, 1, 1, 2, 2]
    assert on["status"].tolist() == ["finished", "pruned", "finished", "finished", "finished", "finished"]
    assert on["objective"].tolist() == pytest.approx([0.55, 0.30, 0.70, 0.62, 0.74, 0.78])  # last values logged
    assert on["param.optimizer.lr"].iloc[-1] == 0.0981 and on["params"].iloc[-1] == {"optimizer.lr": 0.0981}
    assert on["space"].iloc[0] == {"optimizer.lr": LOG_LR}
    assert set(on["budget"]) == {6} and set(on["strategy"]) == {"tpe"} and set(on["factor.dropout"]) == {"on"}
    finals = record.trials.set_index(["study", "level", "seed"])
    assert finals.loc[("dropout", "on", 0), "tuned"] == {"optimizer.lr": 0.0981}
    assert finals.loc[("dropout", "on", 0), "tuned_from"] == 6
    assert pd.isna(finals.loc[("plain", "a", 0), "tuned_from"])
    # a study run asked for one study reads that study's tuning runs only
    assert set(read_study_run(store.uri, store.parent, studies=["same"]).tuning["study"]) == {"same"}


def test_a_study_run_reads_its_own_trials_never_another_study_runs(store):
    # runs of the same configurations under another study run are not this one's: a re-run of a
    # study records the trials it reuses under its own study run (runner.run_study)
    later = store.client.create_run(store.experiment, tags={"dlbench.role": "study"}).info.run_id
    record = read_study_run(store.uri, later)
    assert len(record.trials) == 0 and len(record.tuning) == 0


def test_the_tuning_section_comes_before_the_results_and_lists_each_levels_budget(reports):
    text = index(reports, "dropout")
    assert text.index("## Tuning") < text.index("## Results per level")
    # the fairness table: level, strategy, budget, spent, finished, pruned, failed, diverged, stages
    assert "| off | tpe | 4 | 4 | 3 | 0 | 1 | 0 | 4 × 2 ep |" in text
    assert "| on | tpe | 6 | 6 | 5 | 1 | 0 | 0 | 4 × 2 ep then 2 × 4 ep |" in text
    assert "Dashed vertical lines mark the stage boundaries" in text  # 'on' has two stages


def test_the_chosen_values_per_level_are_those_the_final_trials_trained_with(reports):
    tuned = pd.read_csv(reports / "dropout" / "tuned.csv").set_index("level")
    assert tuned.loc["off", "optimizer.lr"] == 0.01 and tuned.loc["off", "tuning_trial"] == 3
    assert tuned.loc["on", "optimizer.lr"] == 0.0981 and tuned.loc["on", "tuning_trial"] == 6
    assert tuned.loc["on", "best_objective"] == pytest.approx(0.78)
    text = index(reports, "dropout")
    assert "| off | 0.720 | 0.01 | 3 |" in text and "| on | 0.780 | 0.0981 | 6 |" in text
    for ext in ("md", "tex"):
        assert "0.0981" in (reports / "dropout" / f"tuned.{ext}").read_text(encoding="utf-8")
    assert "`tuned.csv`" in text and "`tuning.csv`" in text  # the Files paragraph lists them


def test_without_the_tuned_tag_the_choice_is_the_best_finished_trial_of_the_last_stage(reports):
    tuned = pd.read_csv(reports / "same" / "tuned.csv").set_index("level")
    # val_loss: lower is better; a's pruned trial 2 (0.2) is not taken, b's tie goes to trial 1
    assert tuned.loc["a", "tuning_trial"] == 3 and tuned.loc["a", "best_objective"] == pytest.approx(0.80)
    assert tuned.loc["a", "optimizer.lr"] == 0.05 and tuned.loc["a", "architecture.width"] == 32
    assert tuned.loc["b", "tuning_trial"] == 1 and tuned.loc["b", "optimizer.lr"] == 0.02


def test_a_value_on_the_edge_of_its_space_is_warned_about_and_one_inside_is_not(reports):
    text = index(reports, "dropout")
    assert ("level 'on': optimizer.lr = 0.0981 is at the high edge of its space log-uniform [0.0001, 0.1]: "
            "the optimum may lie outside; widen the range") in text
    assert "level 'off': optimizer.lr" not in text  # 0.01 is well inside [1e-05, 0.1] in log space
    assert "edge of its space" not in index(reports, "same")  # width 32 in [8, 64], lr 0.05 in [0.001, 0.1]


def test_unequal_budgets_and_spaces_are_said_plainly_and_equal_ones_are_not(reports):
    text = index(reports, "dropout")
    assert "**Unequal budgets:** off: 4 trials; on: 6 trials." in text
    assert ("**Unequal search spaces:** off: optimizer.lr log-uniform [1e-05, 0.1]; "
            "on: optimizer.lr log-uniform [0.0001, 0.1].") in text
    assert "The levels were NOT tuned alike" in text
    same = index(reports, "same")
    assert "Unequal" not in same and "NOT tuned alike" not in same
    assert "Every tuned level got the same treatment: random search, a budget of 3 trials" in same


def test_the_tuning_figures_are_written_and_shown(reports):
    for study in ("dropout", "same"):
        for name in ("tuning_curves.png", "tuning_values.png"):
            path = reports / study / name
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (study, name)
            assert f"]({name})" in index(reports, study)
    html = (reports / "dropout" / "index.html").read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == len(list((reports / "dropout").glob("*.png")))


def test_tuning_csv_has_one_row_per_tuning_run(store, reports):
    for study in ("dropout", "same"):
        rows = pd.read_csv(reports / study / "tuning.csv")
        assert sorted(rows["run_id"]) == sorted(store.tuning_ids[study])
        assert all(json.loads(p) == {k.removeprefix("param."): rows.loc[i, k] for k in rows if k.startswith("param.")}
                   for i, p in rows["params"].items())
    statuses = pd.read_csv(reports / "dropout" / "tuning.csv")["status"].value_counts().to_dict()
    assert statuses == {"finished": 8, "pruned": 1, "failed": 1}


def test_a_study_without_tuning_runs_has_no_tuning_section(reports):
    text = index(reports, "plain")
    assert "## Tuning" not in text and "tuning.csv" not in text
    assert not (reports / "plain" / "tuning.csv").exists() and not (reports / "plain" / "tuned.csv").exists()
    assert "tuned" not in pd.read_csv(reports / "plain" / "trials.csv").columns


@pytest.mark.slow  # a whole study, end to end
def test_dlbench_report_rebuilds_the_tuning_section(store):
    proc = run_cli(["report", "--run-id", store.parent, "--tracking-uri", store.uri, "--study", "dropout",
                    "--reports-dir", "cli", "--no-attach"], cwd=store.root, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    text = (store.root / "cli" / "dropout" / "index.md").read_text(encoding="utf-8")
    assert "## Tuning" in text and "optimizer.lr = 0.0981 is at the high edge" in text
    assert (store.root / "cli" / "dropout" / "tuning_curves.png").is_file()


@pytest.mark.parametrize("value, spec, side", [
    (0.09, LOG_LR, "high"),  # log space: within 5% of the ~6.9 nats between the bounds
    (0.0001, LOG_LR, "low"),
    (0.01, LOG_LR, None),
    (0.09, {"kind": "uniform", "low": 0.0, "high": 1.0}, None),  # the same value, linear: far inside
    (0.96, {"kind": "uniform", "low": 0.0, "high": 1.0}, "high"),
    (1, {"kind": "int", "low": 1, "high": 4}, "low"),  # an int range's bound itself
    (2, {"kind": "int", "low": 1, "high": 4}, None),
    ("sgd", {"kind": "choices", "choices": ["sgd", "adam"]}, None),
])
def test_the_edge_of_a_space(value, spec, side):
    assert edge(value, spec) == side


def test_best_so_far_skips_pruned_trials_and_restarts_at_each_stage():
    runs = pd.DataFrame({"stage": [1, 1, 1, 2, 2], "status": ["finished", "pruned", "finished", "finished", "finished"],
                         "objective": [0.5, 0.9, 0.6, 0.4, 0.7]})
    assert best_so_far(runs, higher=True).tolist() == [0.5, 0.5, 0.6, 0.4, 0.7]
    assert best_so_far(runs, higher=False).tolist() == [0.5, 0.5, 0.5, 0.4, 0.4]
