"""The ``dlbench`` command end to end: real subprocesses, a real SQLite MLflow store, real reports.

The tiny study (12 trials) runs once for the module; the tests then read what a user reads:
the MLflow runs, their params, tags, metrics and artifacts, and the report folders.
"""

from __future__ import annotations

import csv
import getpass
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import (
    TINY_BASELINE,
    TINY_EPOCHS,
    TINY_SEEDS,
    TINY_STUDY,
    TINY_TRIALS,
    cli_env,
    copy_store,
    describe_result,
    run_cli,
    sqlite_uri,
    write_plugin,
    write_study,
)

import dlbench
from dlbench.tracking import views as dlbench_views
from dlbench.study_progress import strip_progress

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

HEX64 = re.compile(r"^[0-9a-f]{64}$")
METRICS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "lr"}


def client_for(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(sqlite_uri(db))


def runs_of(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], max_results=1000)


def counts(stdout: str) -> dict[str, int]:
    """The closing summary line of `dlbench run`: finished, diverged, failed, not run (and skipped)."""
    m = re.search(r"(\d+) finished(?: \((\d+) of them already in the store[^)]*\))?, (\d+) diverged, (\d+) failed, "
                  r"(\d+) not run", stdout)
    assert m, f"no summary line in:\n{stdout}"
    finished, skipped, diverged, failed, not_run = (int(g or 0) for g in m.groups())
    return {"finished": finished, "skipped": skipped, "diverged": diverged, "failed": failed, "not_run": not_run}


def dry_run_table(stdout: str) -> dict[str, str]:
    """trial title (``study/level, seed=n``, as the terminal names a trial) -> 12-char config hash
    prefix, from the `--dry-run` table(s).

    Reads the columns by their header names and where each starts (the columns are padded to a
    width: a cell may hold spaces, ``relu, depth=1``), so it works for one table with a ``study``
    column as well as for one table per study under a ``study '<name>' (N trials)`` line.
    """
    out, header, study = {}, None, None
    for line in stdout.splitlines():
        parts = line.split()
        m = re.match(r"^study '([^']+)'", line)
        if not parts:
            header = None  # a table ends at a blank line
        elif m:
            study = m.group(1)
        elif parts[:1] == ["#"] and "config_hash" in parts:
            header = [(h.group(), h.start()) for h in re.finditer(r"\S+", line)]
        elif header and parts and parts[0].isdigit():
            ends = [start for _, start in header[1:]] + [None]
            row = {name: line[start:end].strip() for (name, start), end in zip(header, ends)}
            out[f"{row.get('study', study)}/{row['level']}, seed={row['seed']}"] = row["config_hash"]
    return out


# -- the tiny study, run once -------------------------------------------------------------------


class TinyRun:
    def __init__(self, root: Path, template: Path):
        self.root = root
        self.study = write_study(root, TINY_STUDY)
        self.db = copy_store(template, root)
        self.proc = run_cli(["run", self.study, "--tracking-uri", sqlite_uri(self.db), "--device", "cpu"], cwd=root,
                            env=cli_env(autoload=False))
        self.client = client_for(self.db) if self.db.exists() else None

    @property
    def runs(self):
        return runs_of(self.client, "tiny")

    @property
    def parent(self):
        (parent,) = [r for r in self.runs if r.data.tags.get("dlbench.role") == "study"]
        return parent

    @property
    def children(self):
        return [r for r in self.runs if r.data.tags.get("dlbench.role") == "trial"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, mlflow_template) -> TinyRun:
    run = TinyRun(tmp_path_factory.mktemp("tiny"), mlflow_template)
    assert run.proc.returncode == 0, describe_result(run.proc)
    return run


def test_run_exits_0_and_summarizes(tiny):
    assert counts(tiny.proc.stdout) == {"finished": 12, "skipped": 0, "diverged": 0, "failed": 0, "not_run": 0}
    assert f"MLflow parent run: {tiny.parent.info.run_id}" in tiny.proc.stdout
    assert "report: reports/dropout/index.md" in tiny.proc.stdout
    assert "report: reports/act_depth/index.md" in tiny.proc.stdout
    assert "Traceback" not in tiny.proc.stderr


def test_one_parent_run_with_the_study_file(tiny):
    parents = [r for r in tiny.runs if r.data.tags.get("dlbench.role") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "tiny"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["num_trials"] == "12"
    assert parent.data.params["studies"] == '["dropout", "act_depth"]'  # JSON: a study name may hold a comma
    assert parent.data.params["baseline.optimizer.lr"] == "0.01"
    assert parent.data.tags["dlbench.trials_finished"] == "12"
    assert parent.data.tags["dlbench.trials_failed"] == "0"
    artifacts = {a.path for a in tiny.client.list_artifacts(parent.info.run_id)}
    assert "study.toml" in artifacts
    copy = tiny.client.download_artifacts(parent.info.run_id, "study.toml", str(tiny.root / "dl"))
    assert Path(copy).read_text(encoding="utf-8") == TINY_STUDY


def test_one_child_run_per_trial_under_the_parent(tiny):
    children = tiny.children
    assert len(tiny.runs) == 1 + sum(TINY_TRIALS.values())
    assert len(children) == sum(TINY_TRIALS.values())
    parent_id = tiny.parent.info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in children)
    names = sorted(r.info.run_name for r in children)
    expected = sorted([f"{lvl}, seed={s}" for lvl in ("off", "on") for s in range(TINY_SEEDS)]
                      + [f"{a}, depth={d}, seed={s}" for a in ("relu", "tanh") for d in (1, 2) for s in range(TINY_SEEDS)])
    assert names == expected
    assert all(r.info.status == "FINISHED" for r in tiny.runs)


def test_child_params_hold_the_flattened_config(tiny):
    by_name = {r.info.run_name: r for r in tiny.children}
    on = by_name["on, seed=1"].data.params
    assert on["study"] == "dropout" and on["level"] == "on" and on["seed"] == "1"
    assert on["factor.dropout"] == "on"
    assert on["optimizer.name"] == "adam" and on["optimizer.lr"] == "0.01"
    assert on["architecture.depth"] == "1" and on["architecture.width"] == "16"
    assert on["regularizers"] == "dropout"
    assert on["regularizers.dropout.p_input"] == "0.1" and on["regularizers.dropout.p_hidden"] == "0.2"
    assert on["epochs"] == str(TINY_EPOCHS) and on["dataset.num_samples"] == "600"
    deep = by_name["tanh, depth=2, seed=0"].data.params
    assert deep["architecture.depth"] == "2" and deep["activation.name"] == "tanh"
    assert deep["factor.activation"] == "tanh" and deep["factor.depth"] == "2"
    assert deep["level"] == "tanh, depth=2"
    assert deep["regularizers"] == "none"


def test_child_tags_identify_the_trial(tiny):
    import torch

    for r in tiny.children:
        tags = r.data.tags
        level, seed = r.info.run_name.rsplit(", seed=", 1)  # the run named by its level and seed
        study = r.data.params["study"]
        assert tags["dlbench.study"] == study
        assert tags["dlbench.level"] == level
        assert tags["dlbench.seed"] == seed
        # its identity in the study run keeps the spelling of earlier dlbench versions (their stores resume)
        levels = json.loads(tags["dlbench.levels"])  # factor -> level name, in the study's order
        old = level if len(levels) == 1 else ",".join(f"{f}={lvl}" for f, lvl in levels.items())
        assert tags["dlbench.trial"] == f"{study}/{old}/seed={seed}"
        assert HEX64.match(tags["dlbench.config_hash"])
        assert HEX64.match(tags["dlbench.group_hash"])
        assert tags["dlbench.version"] == dlbench.__version__
        assert tags["dlbench.torch_version"] == torch.__version__
        assert tags["dlbench.device"] == "cpu"
        assert tags["dlbench.status"] == "finished"
        assert tags["dlbench.epochs_run"] == str(TINY_EPOCHS)
        assert int(tags["dlbench.num_params"]) > 0
    assert len({r.data.tags["dlbench.dataset_hash"] for r in tiny.children}) == 1
    act_depth = [r for r in tiny.children if r.data.tags["dlbench.study"] == "act_depth"]
    assert len({r.data.tags["dlbench.config_hash"] for r in act_depth}) == 8


def test_config_hash_tags_match_the_dry_run(tiny):
    proc = run_cli(["run", tiny.study, "--dry-run"], cwd=tiny.root, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    table = dry_run_table(proc.stdout)
    assert len(table) == 12
    tags = {f"{r.data.tags['dlbench.study']}/{r.info.run_name}": r.data.tags["dlbench.config_hash"]
            for r in tiny.children}
    assert set(tags) == set(table)
    for name, full in tags.items():
        assert full[:12] == table[name], name


def test_per_epoch_metric_history(tiny):
    for r in tiny.children:
        assert METRICS <= set(r.data.metrics)
        history = tiny.client.get_metric_history(r.info.run_id, "test_accuracy")
        assert sorted(m.step for m in history) == list(range(TINY_EPOCHS + 1))
        assert all(0.0 <= m.value <= 1.0 for m in history)
        assert r.data.metrics["test_accuracy"] == max(history, key=lambda m: m.step).value


def test_accuracies_are_exact_fractions_of_their_split(tiny, tiny_data):
    # k of n correct is stored as k / n in float64: 0.68 for 680 of 1000, not float32's 0.6800000071525574
    sizes = {"train": len(tiny_data.y_train), "val": len(tiny_data.y_val), "test": len(tiny_data.y_test)}
    for r in tiny.children:
        for split, n in sizes.items():
            for m in tiny.client.get_metric_history(r.info.run_id, f"{split}_accuracy"):
                assert m.value == round(m.value * n) / n, (r.info.run_name, split, m.step, m.value)


def test_the_experiment_declares_itself_model_training(tiny):
    # MLflow 3's UI opens an experiment without this tag on its GenAI traces view, not on its runs
    assert tiny.client.get_experiment_by_name("tiny").tags["mlflow.experimentKind"] == "custom_model_development"


def test_each_study_has_a_saved_view_of_its_levels_in_the_runs_table(tiny):
    # MLflow 3's saved views (Views, top right of the runs table): an experiment tag holding the table's settings
    exp = tiny.client.get_experiment_by_name("tiny")
    views = {k: json.loads(v) for k, v in exp.tags.items() if k.startswith("mlflow.sharedViewState.")}
    assert set(views) == {"mlflow.sharedViewState.dlbench.dropout", "mlflow.sharedViewState.dlbench.act_depth"}
    for study, factors in (("dropout", []), ("act_depth", ["activation", "depth"])):
        view = views[f"mlflow.sharedViewState.dlbench.{study}"]
        assert view["name"] == f"{study} (dlbench)" and isinstance(view["createdAt"], int)
        state = json.loads(view["state"])
        assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "dlbench.level"}]
        assert state["selectedColumns"] == ["metrics.`test_accuracy`", "metrics.`val_accuracy`",
                                            "metrics.`train_accuracy`", *(f"params.`factor.{f}`" for f in factors)]
        # its filter selects exactly the study's trials of the latest study run
        assert f"tags.`mlflow.parentRunId` = '{tiny.parent.info.run_id}'" in state["searchFilter"]
        shown = tiny.client.search_runs([exp.experiment_id], filter_string=state["searchFilter"])
        assert sorted(r.info.run_id for r in shown) == sorted(
            r.info.run_id for r in tiny.children if r.data.tags["dlbench.study"] == study)
    # each level's seeds share a run colour (MLflow's mlflow.runColor), the levels of a study differ
    colors: dict[tuple[str, str], set[str]] = {}
    for r in tiny.children:
        colors.setdefault((r.data.tags["dlbench.study"], r.data.tags["dlbench.level"]), set()).add(
            r.data.tags["mlflow.runColor"])
    assert all(len(c) == 1 for c in colors.values())
    for study in ("dropout", "act_depth"):
        mine = [next(iter(c)) for (s, _), c in colors.items() if s == study]
        assert len(set(mine)) == len(mine) > 1
    assert dlbench_views.view_url("http://127.0.0.1:5000", exp.experiment_id, "act_depth") == (
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        "&viewStateShareKey=dlbench.act_depth")


def test_parent_run_holds_the_questions_and_each_level_over_seeds(tiny):
    note = tiny.parent.data.tags["mlflow.note.content"]
    assert note.startswith("**Progress**: 12/12 trials done (12 finished")  # then what the study file says
    note = strip_progress(note)
    assert note.startswith("dlbench test suite: the smallest study that exercises everything\n\n"
                           "**dropout**: Does dropout help a small MLP?\n\n| level | test accuracy, mean | std | seeds |")
    assert "\n\n**act_depth**: How do activation and depth interact?\n\n| level |" in note
    by_level: dict[tuple[str, str], list[float]] = {}
    for r in sorted(tiny.children, key=lambda r: int(r.data.tags["dlbench.trial_index"])):
        key = (r.data.tags["dlbench.study"], r.data.tags["dlbench.level"])
        by_level.setdefault(key, []).append(r.data.metrics["test_accuracy"])
    rows = [line for line in note.splitlines() if line.startswith("| ") and not line.startswith(("| level", "| ---"))]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [level for _, level in by_level]
    for row, values in zip(rows, by_level.values()):  # 4 significant digits: what a few seeds can say
        _, mean, std, n = row.strip("| ").split(" | ")
        assert (mean, std, n) == (f"{statistics.fmean(values):.4g}", f"{statistics.stdev(values):.4g}", str(TINY_SEEDS))
    assert ("act_depth", "relu, depth=2") in by_level
    assert tiny.parent.data.metrics == {}  # no per-level metric: the runs table and its column picker stay the trials'


def test_runs_say_who_made_them_from_which_file(tiny):
    # the UI's "Created by" and "Source" columns
    for r in [tiny.parent, *tiny.children]:
        assert r.data.tags["mlflow.user"] == getpass.getuser()
        assert r.data.tags["mlflow.source.name"] == str(tiny.study)
        assert r.data.tags["mlflow.source.type"] == "LOCAL"


def test_child_artifacts(tiny):
    r = next(r for r in tiny.children if r.info.run_name == "on, seed=0")
    assert "model.txt" in {a.path for a in tiny.client.list_artifacts(r.info.run_id)}
    model = Path(tiny.client.download_artifacts(r.info.run_id, "model.txt", str(tiny.root / "dl-model")))
    assert "Dropout(p=0.1" in model.read_text() and "Dropout(p=0.2" in model.read_text()


@pytest.mark.parametrize("study, levels", [("dropout", [("off",), ("on",)]),
                                           ("act_depth", [("relu", "1"), ("relu", "2"), ("tanh", "1"), ("tanh", "2")])])
def test_reports_written(tiny, study, levels):
    folder = tiny.root / "reports" / study
    for name in ("index.md", "summary.csv", "trials.csv", "test_accuracy.png"):
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "test_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(folder / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    factors = ["dropout"] if study == "dropout" else ["activation", "depth"]
    assert [tuple(row[f] for f in factors) for row in rows] == levels
    for row in rows:
        assert int(row["n"]) == TINY_SEEDS
        assert int(row["failed"]) == 0 and int(row["diverged"]) == 0
        assert float(row["ci95_low"]) <= float(row["mean"]) <= float(row["ci95_high"])
    index = (folder / "index.md").read_text()
    assert index.startswith(f"# {study}\n")
    for level in levels:
        assert f"| {' | '.join(level)} | {TINY_SEEDS} | " in index
    assert "](test_accuracy.png)" in index
    with open(folder / "trials.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == TINY_TRIALS[study]


def test_reports_attached_to_the_parent_run(tiny):
    paths = {a.path for a in tiny.client.list_artifacts(tiny.parent.info.run_id, "reports/dropout")}
    assert "reports/dropout/index.md" in paths and "reports/dropout/test_accuracy.png" in paths


def test_rerun_skips_trials_already_in_the_store(tiny, tmp_path):
    # the same command again: every trial already finished (same config hash), nothing retrains
    before = {r.info.run_id for r in tiny.children}
    note = tiny.parent.data.tags["mlflow.note.content"]
    proc = run_cli(["run", tiny.study, "--tracking-uri", sqlite_uri(tiny.db), "--device", "cpu", "--reports-dir",
                    tmp_path / "r"], cwd=tiny.root, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert counts(proc.stdout) == {"finished": 12, "skipped": 12, "diverged": 0, "failed": 0, "not_run": 0}
    assert {r.info.run_id for r in tiny.children} == before  # no new trial run
    assert all(r.info.status == "FINISHED" for r in tiny.runs)
    parent = tiny.parent  # its per-level summary (the description's tables) is the same, not written twice
    assert "| level | test accuracy, mean |" in note
    assert strip_progress(parent.data.tags["mlflow.note.content"]) == strip_progress(note)
    assert parent.data.tags["mlflow.note.content"].startswith("**Progress**: 12/12 trials done")  # all found done
    assert parent.data.metrics == {}
    # the reports are rebuilt from the stored results
    with open(tmp_path / "r" / "dropout" / "summary.csv", newline="") as f:
        assert [int(row["n"]) for row in csv.DictReader(f)] == [TINY_SEEDS, TINY_SEEDS]


# -- the MLflow UI ------------------------------------------------------------------------------


UI_READY_S = 120  # mlflow ui starts uvicorn workers and job consumers: slow on a busy 2-core box


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def serving(url: str) -> bool:
    try:
        return http_get(url)[0] == 200
    except OSError:
        return False


class UI:
    def __init__(self, cwd: Path, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(cwd / "ui.log", "w+")
        # its own session (process group), so the MLflow server it starts can be cleaned up too
        self.proc = subprocess.Popen([sys.executable, "-m", "dlbench.cli", "ui", "--port", str(port)], cwd=cwd,
                                     env=cli_env(), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # the group may outlive its leader: make sure nothing of it is left
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


@pytest.fixture(scope="module")
def ui(tiny):
    """`dlbench ui` started in the tiny study's folder without --tracking-uri: the default store."""
    server = UI(tiny.root, free_port())
    try:
        deadline = time.monotonic() + UI_READY_S
        while not serving(server.url + "/health"):
            assert server.proc.poll() is None, f"dlbench ui exited {server.proc.returncode}:\n{server.output()}"
            assert time.monotonic() < deadline, f"dlbench ui not serving after {UI_READY_S}s:\n{server.output()}"
            time.sleep(0.5)
        yield server
    finally:
        server.stop()


def test_ui_serves_the_store_dlbench_run_writes(ui):
    assert http_get(ui.url + "/")[0] == 200
    assert http_get(ui.url + "/health")[0] == 200
    status, body = http_get(ui.url + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")
    assert status == 200, body
    assert b'"name": "tiny"' in body or b'"name":"tiny"' in body
    assert f"http://127.0.0.1:{ui.port}" in ui.output()


def test_stopping_ui_stops_the_mlflow_server(ui):
    # A process manager, `kill` or `timeout` stops `dlbench ui` with SIGTERM to its pid: the
    # MLflow server it started must go with it, not keep serving the port.
    ui.proc.send_signal(signal.SIGTERM)
    ui.proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while serving(ui.url + "/health") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not serving(ui.url + "/health"), "the MLflow server still serves after `dlbench ui` was terminated"


# -- dry run and help ---------------------------------------------------------------------------


def test_dry_run_prints_the_trials_and_touches_nothing(tmp_path):
    study = write_study(tmp_path, TINY_STUDY)
    proc = run_cli(["run", study, "--dry-run"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    headers = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["#"]]
    assert headers and all({"level", "seed", "config_hash"} <= set(h) for h in headers)
    columns = {c for h in headers for c in h}
    # what the studies vary is shown; what no trial varies is not
    assert {"architecture.depth", "activation.name", "regularizers"} <= columns
    assert "optimizer.lr" not in columns
    table = dry_run_table(proc.stdout)
    assert len(table) == 12
    assert all(re.fullmatch(r"[0-9a-f]{12}", h) for h in table.values())
    assert f"12 trials in 2 studies from {study}" in proc.stdout
    assert "dry run: nothing trained" in proc.stdout
    assert "preflight: checked 9 distinct components in 5 distinct configs on a tiny batch" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]  # no mlflow.db, mlruns, reports


def test_dry_run_with_study_filter(tmp_path):
    study = write_study(tmp_path, TINY_STUDY)
    proc = run_cli(["run", study, "--dry-run", "--study", "dropout"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert set(dry_run_table(proc.stdout)) == {f"dropout/{lvl}, seed={s}" for lvl in ("off", "on") for s in (0, 1)}
    assert "4 trials in 1 study from" in proc.stdout


def test_help_and_version(tmp_path):
    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0, describe_result(proc)
    for command in ("run", "plugins", "ui"):
        assert command in proc.stdout
    proc = run_cli(["run", "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "--tracking-uri" in proc.stdout
    proc = run_cli(["--version"], cwd=tmp_path)
    assert proc.returncode == 0 and dlbench.__version__ in proc.stdout


# -- user errors: exit 2, the file and key in the message, no traceback --------------------------


def assert_user_error(proc, *expected: str) -> None:
    assert proc.returncode == 2, describe_result(proc)
    assert "Traceback" not in proc.stderr, describe_result(proc)
    assert proc.stderr.startswith("Error: "), describe_result(proc)
    for text in expected:
        assert text in proc.stderr, describe_result(proc)


GOOD_STUDY = TINY_BASELINE + "[study]\nseeds = 1\n[studies.s.levels]\na = {}\n"


@pytest.mark.parametrize("text, expected", [
    ("[baseline\nepochs = 3\n", ["invalid TOML", "line 1"]),
    (TINY_BASELINE.replace('name = "adam"', 'name = "adm"') + "[studies.s.levels]\na = {}\n",
     ["baseline.optimizer: unknown optimizer 'adm'", "did you mean 'adam'?"]),
    ("[studies.s.levels]\na = { epochz = 3 }\n", ["studies.s.levels.a.epochz: unknown key", "did you mean 'epochs'?"]),
    ("[study]\nseeds = 0\n[studies.s.levels]\na = {}\n", ["study.seeds: expected a seed count"]),
])
def test_bad_study_file_is_a_user_error(tmp_path, text, expected):
    study = write_study(tmp_path, text)
    for args in (["run", study, "--dry-run"], ["run", study, "--tracking-uri", sqlite_uri(tmp_path / "m.db")]):
        proc = run_cli(args, cwd=tmp_path, env=cli_env(autoload=False))
        assert_user_error(proc, str(study), *expected)
    assert not (tmp_path / "m.db").exists()


def test_missing_study_file_is_a_user_error(tmp_path):
    proc = run_cli(["run", "nope.toml"], cwd=tmp_path, env=cli_env(autoload=False))
    assert_user_error(proc, "nope.toml", "no such study file")


def test_unknown_study_filter_is_a_user_error(tmp_path):
    study = write_study(tmp_path, TINY_STUDY)
    proc = run_cli(["run", study, "--dry-run", "--study", "dropot"], cwd=tmp_path, env=cli_env(autoload=False))
    assert_user_error(proc, "--study 'dropot': no such study", "did you mean 'dropout'?")


def test_cuda_graphs_on_a_cpu_is_a_user_error(tmp_path):
    study = write_study(tmp_path, TINY_STUDY)
    proc = run_cli(["run", study, "--device", "cpu", "--cuda-graphs", "on"], cwd=tmp_path, env=cli_env(autoload=False))
    assert_user_error(proc, "--cuda-graphs on", "need a GPU", "--device cpu", "Leave --cuda-graphs at auto")
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was written


@pytest.mark.parametrize("device, expected", [
    ("cuda:7", "--device cuda:7"),
    ("tpu", "--device 'tpu'"),
    ("gpu0", "--device 'gpu0'"),
])
def test_bad_device_is_a_user_error(tmp_path, device, expected):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    study = write_study(tmp_path, GOOD_STUDY)
    proc = run_cli(["run", study, "--device", device, "--tracking-uri", sqlite_uri(tmp_path / "m.db")], cwd=tmp_path,
                   env=cli_env(autoload=False))
    assert_user_error(proc, expected, "use --device cpu" if device.startswith("cuda") else "auto, cpu, cuda or cuda:N")
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "reports").exists()


# -- a trial that fails -------------------------------------------------------------------------


# Raises from its second training step: past the preflight's one step, so the trial itself fails.
EXPLODING_PLUGIN = """
import math
import torch
from dlbench import hookimpl

class Exploding(torch.nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.linear = torch.nn.Linear(math.prod(input_shape), num_classes)
        self.steps = 0

    def forward(self, x):
        self.steps += self.training
        if self.steps > 1:
            raise RuntimeError("exploding architecture: boom in training")
        return self.linear(x.flatten(1))

def exploding(input_shape, num_classes, activation):
    \"\"\"An architecture that raises from its second training step (a test plugin).\"\"\"
    return Exploding(input_shape, num_classes)

@hookimpl
def dlbench_register_architectures(register):
    register("exploding", exploding)
"""

FAILING_STUDY = TINY_BASELINE + """
[study]
name = "failing"
seeds = 2

[studies.arch.levels]
mlp = {}
broken = { architecture = "exploding" }
"""


def test_a_failing_level_fails_alone(tmp_path, new_store):
    write_plugin(tmp_path, "exploding", EXPLODING_PLUGIN)
    study = write_study(tmp_path, FAILING_STUDY)
    db = new_store(tmp_path)
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--device", "cpu"], cwd=tmp_path,
                   env=cli_env(autoload=False))
    assert proc.returncode == 1, describe_result(proc)
    assert counts(proc.stdout) == {"finished": 2, "skipped": 0, "diverged": 0, "failed": 2, "not_run": 0}
    assert "error.txt" in proc.stderr
    assert "Traceback" not in proc.stderr

    client = client_for(db)
    runs = runs_of(client, "failing")
    (parent,) = [r for r in runs if r.data.tags.get("dlbench.role") == "study"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["dlbench.trials_failed"] == "2"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("dlbench.role") == "trial"}
    assert set(children) == {"mlp, seed=0", "mlp, seed=1", "broken, seed=0", "broken, seed=1"}
    for seed in (0, 1):
        ok = children[f"mlp, seed={seed}"]
        assert ok.info.status == "FINISHED" and ok.data.tags["dlbench.status"] == "finished"
        bad = children[f"broken, seed={seed}"]
        assert bad.info.status == "FAILED" and bad.data.tags["dlbench.status"] == "failed"
        assert bad.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert bad.data.params["architecture.name"] == "exploding"
        err = Path(client.download_artifacts(bad.info.run_id, "error.txt", str(tmp_path / f"dl{seed}")))
        text = err.read_text()
        assert "Traceback" in text and "RuntimeError: exploding architecture: boom in training" in text
    with open(tmp_path / "reports" / "arch" / "summary.csv", newline="") as f:
        summary = {row["arch"]: row for row in csv.DictReader(f)}
    assert int(summary["mlp"]["n"]) == 2 and int(summary["mlp"]["failed"]) == 0
    assert int(summary["broken"]["n"]) == 0 and int(summary["broken"]["failed"]) == 2
    index = (tmp_path / "reports" / "arch" / "index.md").read_text()
    assert "2 trial(s) did not finish" in index and "broken seed 0 (failed)" in index


def test_fail_fast_stops_at_the_first_failure(tmp_path, new_store):
    write_plugin(tmp_path, "exploding", EXPLODING_PLUGIN)
    study = write_study(tmp_path, FAILING_STUDY.replace("mlp = {}\nbroken", "broken").replace(
        '"exploding" }', '"exploding" }\nmlp = {}'))
    proc = run_cli(["run", study, "--fail-fast", "--tracking-uri", sqlite_uri(new_store(tmp_path)), "--device",
                    "cpu"], cwd=tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 1, describe_result(proc)
    assert counts(proc.stdout) == {"finished": 0, "skipped": 0, "diverged": 0, "failed": 1, "not_run": 3}
    runs = runs_of(client_for(tmp_path / "mlflow.db"), "failing")
    (parent,) = [r for r in runs if r.data.tags.get("dlbench.role") == "study"]
    assert parent.data.tags["dlbench.trials_not_run"] == "3"
    assert [(r.data.tags["dlbench.study"], r.info.run_name) for r in runs
            if r.data.tags.get("dlbench.role") == "trial"] == [("arch", "broken, seed=0")]


# -- stopping a running study -------------------------------------------------------------------


LONG_STUDY = TINY_BASELINE.replace("epochs = 2", "epochs = 400") + """
[study]
name = "long"
seeds = 3

[studies.s.levels]
a = {}
"""


def test_an_interrupt_between_claiming_a_trial_and_training_it_leaves_no_run_running(tmp_path, new_store,
                                                                                     monkeypatch):
    """Ctrl-C or SIGTERM may come while the second trial's run is being made (its claim), before
    any executor holds it: that run is ended KILLED too, not left RUNNING for a dead process."""
    import io

    from dlbench import runner
    from dlbench.config import read_study_file
    from dlbench.plugins import load_plugins
    from dlbench.settings import RunOptions
    from dlbench.study import expand

    real_claim, claims = runner.claim, []

    def claim_then_interrupt(work, *args):
        out = real_claim(work, *args)
        claims.append(work)
        if len(claims) == 2:
            raise KeyboardInterrupt  # the run exists now; training has not started
        return out

    monkeypatch.setattr(runner, "claim", claim_then_interrupt)
    sf = read_study_file(write_study(tmp_path, LONG_STUDY.replace("epochs = 400", "epochs = 1")))
    plugins = load_plugins(None, autoload=False)
    db = new_store(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        options = RunOptions(device="cpu", tracking_uri=sqlite_uri(db), reports_dir=tmp_path / "reports", jobs=1,
                             stack_size=1)
        runner.run_study(sf, expand(sf, plugins.registry), plugins, options, io.StringIO())
    runs = {r.info.run_name: r for r in runs_of(client_for(db), "long")}
    assert runs["a, seed=0"].info.status == "FINISHED"
    assert runs["a, seed=1"].info.status == "KILLED"  # resumable: the next run adopts it
    assert "a, seed=2" not in runs and runs["long"].info.status == "KILLED"


def test_sigterm_closes_the_running_trial_as_killed(tmp_path, new_store):
    from mlflow.entities import ViewType

    study = write_study(tmp_path, LONG_STUDY)
    db = new_store(tmp_path)
    # one trial at a time in the dlbench process: seed 0 finishes before seed 1 starts
    # (stacks and workers under SIGTERM: tests/test_workers.py)
    proc = subprocess.Popen([sys.executable, "-m", "dlbench.cli", "run", str(study), "--tracking-uri", sqlite_uri(db),
                             "--device", "cpu", "--jobs", "1", "--stack-size", "1"], cwd=tmp_path,
                            env=cli_env(autoload=False), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    client = client_for(db)
    try:
        # wait until the second trial has started (its MLflow run exists), then stop the study
        deadline = time.monotonic() + 300
        second = None
        while second is None:
            assert proc.poll() is None, f"the study ended before it could be stopped: {proc.communicate()}"
            assert time.monotonic() < deadline, "the second trial never started"
            time.sleep(0.3)
            exp = client.get_experiment_by_name("long")
            runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'a, seed=1'",
                                      ViewType.ALL) if exp else []
            second = runs[0] if runs else None
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, f"exit {proc.returncode}\n{stdout}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert "Interrupted" in stderr
    runs = {r.info.run_name: r for r in runs_of(client_for(db), "long")}
    assert runs["a, seed=0"].info.status == "FINISHED"
    assert runs["a, seed=1"].info.status == "KILLED"
    assert "a, seed=2" not in runs
    assert runs["long"].info.status == "KILLED"
    assert runs["long"].data.tags["dlbench.trials_finished"] == "1"
    assert runs["long"].data.tags["dlbench.trials_not_run"] == "2"


# -- two study files, one reports folder --------------------------------------------------------


def test_a_study_file_cannot_overwrite_the_report_of_another_files_study_of_the_same_name(tmp_path, new_store):
    """Two files in two folders, each with ``[studies.s]`` (and the same experiment, both named
    study.toml): the second refuses the first's report folder before training, naming the first
    file and --reports-dir; the first file runs again, and the second runs into another folder.
    `dlbench report` of the second's run refuses that folder too."""
    text = GOOD_STUDY.replace("epochs = 2", "epochs = 1")
    one, two = write_study(tmp_path / "one", text), write_study(tmp_path / "two", text.replace("width = 16", "width = 8"))
    uri, shared = sqlite_uri(new_store(tmp_path)), tmp_path / "shared"

    def run(study, reports, *extra):
        return run_cli(["run", study, "--tracking-uri", uri, "--device", "cpu", "--jobs", "1", "--reports-dir", reports,
                        "--checkpoint-dir", tmp_path / "ckpt", *extra], cwd=tmp_path, env=cli_env(autoload=False))

    first = run(one, shared)
    assert first.returncode == 0, describe_result(first)
    folder = shared / "s"
    marker = json.loads((folder / ".dlbench-report.json").read_text(encoding="utf-8"))
    assert marker == {"study_file": str(one.resolve()), "experiment": "study", "study": "s"}
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    second = run(two, shared)
    assert_user_error(second, f"{folder}/ holds the report of study 's' of {one.resolve()} (experiment 'study')",
                      f"this run of {two} would overwrite it", f"--reports-dir {shared / 'study'}",
                      f"delete {folder}/ to replace it")
    assert "finished" not in second.stdout  # refused before anything trained
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the first's report is untouched

    again = run(one, shared)  # the same file again: its own report, rebuilt
    assert again.returncode == 0, describe_result(again)
    assert counts(again.stdout)["skipped"] == 1
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    elsewhere = run(two, tmp_path / "other")
    assert elsewhere.returncode == 0, describe_result(elsewhere)
    marker = json.loads((tmp_path / "other" / "s" / ".dlbench-report.json").read_text(encoding="utf-8"))
    assert marker["study_file"] == str(two.resolve())
    parent = re.search(r"MLflow parent run: (\w+)", elsewhere.stdout).group(1)
    report = run_cli(["report", "--run-id", parent, "--tracking-uri", uri, "--reports-dir", shared, "--no-attach"],
                     cwd=tmp_path, env=cli_env(autoload=False))
    assert_user_error(report, "no report was written", f"{folder}/ holds the report of study 's' of {one.resolve()}",
                      f"--reports-dir {shared / 'study'}")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
