"""`dlbench ui` and `dlbench relocate` end to end: a real `dlbench ui` process serving MLflow's UI
and REST API for a real SQLite store written by a tiny `dlbench run`, and stores copied or moved
as folders (``cp -r``, the original deleted) that open with their artifacts again.

The rewriting itself (``dlbench.tracking.relocate``) is also checked in-process on small
hand-made databases: it reads and writes MLflow's tables with plain SQL.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, sqlite_uri, write_study

STUDY = "uitest"
TINY = f"""\
[study]
name = "{STUDY}"
seeds = 1

{TINY_BASELINE}
[studies.dropout.levels]
off = {{}}
on = {{ regularizers = [{{ name = "dropout", p_input = 0.1, p_hidden = 0.2 }}] }}
"""
UI_START_S = 180  # generous: a busy 2-core machine running the rest of the suite beside it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, data: dict | None = None) -> tuple[int, bytes]:
    """GET (or POST ``data`` as JSON) straight to 127.0.0.1, no proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with opener.open(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def client_for(folder: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(sqlite_uri(folder / "mlflow.db"))


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory, mlflow_template) -> Path:
    """A folder with the tiny study run into it: mlflow.db and mlruns/ (to be copied, never changed)."""
    folder = tmp_path_factory.mktemp("ui") / "original"
    folder.mkdir()
    shutil.copyfile(mlflow_template, folder / "mlflow.db")
    study = write_study(folder, TINY)
    proc = run_cli(["run", study, "--device", "cpu"], cwd=folder, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert (folder / "mlruns" / STUDY).is_dir()
    return folder


def moved_copy(study_folder: Path, tmp_path: Path, name: str) -> Path:
    """The study's folder as a user moves it: ``cp -r`` elsewhere, the original deleted (here the
    original is kept aside and renamed back, for the other tests)."""
    aside = study_folder.with_name(study_folder.name + "-aside")
    copy = tmp_path / name
    subprocess.run(["cp", "-r", str(study_folder), str(copy)], check=True)
    study_folder.rename(aside)  # deleted, as far as the copy can tell
    return copy


def put_back(study_folder: Path) -> None:
    if study_folder.exists():  # written into by a copy that still pointed there (the test fails on it)
        shutil.rmtree(study_folder)
    study_folder.with_name(study_folder.name + "-aside").rename(study_folder)


@pytest.fixture
def moved_store(study_folder, tmp_path):
    copy = moved_copy(study_folder, tmp_path, "moved")
    yield copy
    put_back(study_folder)


class RunningUI:
    """`dlbench ui --port PORT` in ``cwd``, its output read line by line as it comes."""

    def __init__(self, cwd: Path, *args: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.errors = tempfile.TemporaryFile("w+")  # a file: nothing blocks on a pipe nobody reads
        self.proc = subprocess.Popen([sys.executable, "-m", "dlbench.cli", "ui", "--port", str(self.port), *args],
                                     cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=self.errors,
                                     text=True, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_url(self) -> tuple[str, tuple[int, bytes]]:
        """The URL line once printed, and what GET of its page answered right after it appeared."""
        while True:
            try:
                line = self.lines.get(timeout=UI_START_S)
            except queue.Empty:
                pytest.fail(f"dlbench ui printed no URL in {UI_START_S} s: {self.stdout}")
            if line is None:
                self.proc.wait(timeout=30)
                pytest.fail(f"dlbench ui exited {self.proc.returncode}: {self.stdout} {self.read_errors()}")
            self.stdout.append(line)
            if self.base in line:
                answer = fetch(self.base + "/")  # at once: the line says it answers
                return line.strip(), answer

    def stop(self, sig=signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=30)
        self.stderr = self.read_errors()
        return code

    def read_errors(self) -> str:
        self.errors.seek(0)
        return self.errors.read()


@pytest.fixture(scope="module")
def ui(study_folder, tmp_path_factory):
    """`dlbench ui` (the default store: ./mlflow.db) in a copy of the study's folder whose original
    was deleted: it relocates the store first, then serves."""
    copy = moved_copy(study_folder, tmp_path_factory.mktemp("ui-served"), "served")
    server = RunningUI(copy)
    server.folder = copy
    try:
        server.url_line, server.first_answer = server.wait_for_url()
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    finally:  # relocated by then (before it serves): the original back for the other tests
        put_back(study_folder)
    try:
        yield server
    finally:
        server.stop()


slow = pytest.mark.slow  # the end-to-end tests below: real dlbench processes (-m "not slow" leaves them out)


@slow
def test_ui_prints_its_url_only_once_the_page_answers(ui):
    assert ui.first_answer[0] == 200 and b"<html" in ui.first_answer[1].lower()
    experiment = client_for(ui.folder).get_experiment_by_name(STUDY)
    assert ui.url_line.endswith(f"{ui.base}/#/experiments/{experiment.experiment_id}/runs?"
                                "workflowType=machine_learning"), ui.url_line
    assert f"experiment '{STUDY}'" in "".join(ui.stdout)


@slow
def test_ui_lists_each_studys_saved_view_and_serves_it(ui):
    heading = ui.lines.get(timeout=30)  # printed right after the URL line
    line = ui.lines.get(timeout=30)
    assert heading.startswith("each study's trials grouped by level"), heading
    study, url = line.split()
    experiment = client_for(ui.folder).get_experiment_by_name(STUDY)
    assert study == "dropout" and url == (f"{ui.base}/#/experiments/{experiment.experiment_id}/runs?"
                                          "workflowType=machine_learning&viewStateShareKey=dlbench.dropout")
    status, body = fetch(f"{ui.base}/api/2.0/mlflow/experiments/get?experiment_id={experiment.experiment_id}")
    tags = {t["key"]: t["value"] for t in json.loads(body)["experiment"]["tags"]}
    assert status == 200 and json.loads(tags["mlflow.sharedViewState.dlbench.dropout"])["name"] == "dropout (dlbench)"


@slow
def test_ui_serves_the_runs_of_the_study(ui):
    status, body = fetch(f"{ui.base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={STUDY}")
    assert status == 200, body
    experiment_id = json.loads(body)["experiment"]["experiment_id"]
    status, body = fetch(f"{ui.base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})
    assert status == 200, body
    roles = sorted(tag["value"] for r in json.loads(body)["runs"] for tag in r["data"]["tags"]
                   if tag["key"] == "dlbench.role")
    assert roles == ["study", "trial", "trial"], roles  # the study's run and its two trials


@slow
def test_ui_serves_a_runs_artifacts_from_the_relocated_store(ui):
    experiment_id = client_for(ui.folder).get_experiment_by_name(STUDY).experiment_id
    status, body = fetch(f"{ui.base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 1,
                                                                    "filter": "tags.`dlbench.role` = 'trial'"})
    assert status == 200, body
    (run,) = json.loads(body)["runs"]
    assert run["info"]["artifact_uri"].startswith(f"{ui.folder}/mlruns/"), run["info"]["artifact_uri"]
    status, body = fetch(f"{ui.base}/ajax-api/2.0/mlflow/artifacts/list?run_id={run['info']['run_id']}")
    assert status == 200 and "config.json" in {f["path"] for f in json.loads(body)["files"]}, body
    status, body = fetch(f"{ui.base}/get-artifact?path=config.json&run_uuid={run['info']['run_id']}")
    assert status == 200 and json.loads(body)["epochs"] == 2, body


@slow
def test_ui_is_one_process(ui):
    assert ui.proc.poll() is None
    assert descendants(ui.proc.pid) == []  # no uvicorn workers, job runner or huey consumers


@slow
def test_ctrl_c_stops_the_ui_with_exit_0_and_frees_the_port(ui):
    assert ui.stop(signal.SIGINT) == 0, ui.stderr
    assert "Traceback" not in ui.stderr, ui.stderr
    assert "store copied or moved here: artifact locations" in ui.stderr  # relocated, said in a line
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", ui.port))  # nothing listens there any more
    with socket.socket() as s:  # and a new server may (its closed connections wait out TIME_WAIT: SO_REUSEADDR)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ui.port))
        s.listen()


@slow
def test_sigterm_stops_the_ui_as_ctrl_c_does(study_folder):
    server = RunningUI(study_folder, "--experiment", STUDY)
    try:
        line, answer = server.wait_for_url()
        assert answer[0] == 200 and "/runs?workflowType=machine_learning" in line
        assert "(--experiment;" in "".join(server.stdout)
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.stderr
    assert "store copied or moved" not in server.stderr  # a store in place is not rewritten


@slow
def test_ui_refuses_a_missing_store_an_unknown_experiment_and_a_taken_port(study_folder, tmp_path):
    proc = run_cli(["ui", "--port", "0"], cwd=tmp_path)  # no ./mlflow.db: nothing is created
    assert proc.returncode == 2 and "no MLflow store at" in proc.stderr, describe_result(proc)
    assert not (tmp_path / "mlflow.db").exists()
    proc = run_cli(["ui", "--port", "0", "--experiment", "nope"], cwd=study_folder)
    assert proc.returncode == 2 and "--experiment 'nope': no such experiment" in proc.stderr, describe_result(proc)
    assert STUDY in proc.stderr and "Traceback" not in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli(["ui", "--port", port], cwd=study_folder)
    assert proc.returncode == 2 and f"--port {port}: cannot listen" in proc.stderr, describe_result(proc)
    assert "Traceback" not in proc.stderr


@slow
def test_a_store_copied_elsewhere_and_deleted_opens_with_its_artifacts_after_relocate(moved_store, study_folder):
    uri = sqlite_uri(moved_store / "mlflow.db")
    client = client_for(moved_store)
    experiment = client.get_experiment_by_name(STUDY)
    run = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags["dlbench.role"] == "trial")
    with pytest.raises(Exception):  # the database still names the deleted folder
        client.download_artifacts(run.info.run_id, "config.json", str(moved_store))

    # a report would miss the artifacts (or read and attach to another store's): it says what to run
    proc = run_cli(["report", "--experiment", STUDY, "--tracking-uri", uri], cwd=moved_store)
    assert proc.returncode == 2, describe_result(proc)
    assert f"dlbench relocate --tracking-uri {uri}" in proc.stderr and "Traceback" not in proc.stderr
    # so would a run (its new runs' artifacts into the old folder) and a reproduction (the config it reads)
    for command in (["run", moved_store / "study.toml", "--force", "--reports-dir", moved_store / "reports-run"],
                    ["reproduce", run.info.run_id]):
        proc = run_cli([*command, "--tracking-uri", uri, "--device", "cpu"], cwd=moved_store,
                       env=cli_env(autoload=False))
        assert proc.returncode == 2, describe_result(proc)
        assert f"dlbench relocate --tracking-uri {uri}" in proc.stderr and "Traceback" not in proc.stderr
    assert len(client.search_runs([experiment.experiment_id])) == 3  # nothing was logged

    proc = run_cli(["relocate", "--tracking-uri", uri], cwd=moved_store)
    assert proc.returncode == 0, describe_result(proc)
    assert f"-> {moved_store / 'mlruns'} (1 experiment, 3 runs); the old folder is gone" in proc.stdout, proc.stdout
    path = client_for(moved_store).download_artifacts(run.info.run_id, "config.json", str(moved_store))
    assert json.loads(Path(path).read_text())["epochs"] == 2

    again = run_cli(["relocate", "--tracking-uri", uri], cwd=moved_store)
    assert again.returncode == 0 and "nothing to relocate" in again.stdout, describe_result(again)

    proc = run_cli(["report", "--experiment", STUDY, "--tracking-uri", uri, "--reports-dir",
                    moved_store / "reports2"], cwd=moved_store)
    assert proc.returncode == 0, describe_result(proc)
    assert (moved_store / "reports2" / "dropout" / "index.md").is_file()
    attached = client_for(moved_store).list_artifacts(client_for(moved_store).search_runs(
        [experiment.experiment_id], "tags.`dlbench.role` = 'study'")[0].info.run_id, "reports/dropout")
    assert attached and all(not Path(a.path).is_absolute() for a in attached)
    assert not study_folder.exists()  # nothing was written where the store used to be


@slow
def test_relocate_refuses_a_tracking_server_and_a_missing_file(tmp_path):
    proc = run_cli(["relocate", "--tracking-uri", "http://127.0.0.1:9"], cwd=tmp_path)
    assert proc.returncode == 2 and "is an MLflow tracking server" in proc.stderr, describe_result(proc)
    proc = run_cli(["relocate"], cwd=tmp_path)
    assert proc.returncode == 2 and "no such database file" in proc.stderr, describe_result(proc)
    assert "Traceback" not in proc.stderr


# -- the rewriting, in-process, on hand-made databases ------------------------------------------


def make_store(folder: Path, locations: dict[str, list[str]], db_name: str = "mlflow.db") -> Path:
    """A database with MLflow's location columns (experiments, runs, logged models) holding
    ``locations`` (experiment location -> its runs' artifact URIs)."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / db_name
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT, artifact_location TEXT)")
    conn.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, experiment_id INTEGER, artifact_uri TEXT)")
    conn.execute("CREATE TABLE logged_models (model_id TEXT PRIMARY KEY, artifact_location TEXT)")
    for i, (exp, runs) in enumerate(locations.items()):
        conn.execute("INSERT INTO experiments VALUES (?, ?, ?)", (i, f"e{i}", exp))
        conn.executemany("INSERT INTO runs VALUES (?, ?, ?)", [(f"r{i}_{j}", i, uri) for j, uri in enumerate(runs)])
    conn.commit()
    conn.close()
    return db


def stored(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return ([v for (v,) in conn.execute("SELECT artifact_location FROM experiments ORDER BY experiment_id")]
                + [v for (v,) in conn.execute("SELECT artifact_uri FROM runs ORDER BY run_uuid")])
    finally:
        conn.close()


def test_relocate_points_a_moved_stores_locations_beside_it_and_leaves_the_rest(tmp_path):
    from dlbench.tracking.relocate import moved, relocate

    old, new = tmp_path / "old", tmp_path / "new"
    db = make_store(new, {
        f"{old}/mlruns/study": [f"{old}/mlruns/study/abc/artifacts", f"{old}/mlruns/study/def/artifacts"],
        f"{old}/mlruns/0": [],  # MLflow's Default experiment: no folder anywhere, moved with the rest
        f"file://{old}/mlruns/uri%20form": [f"file://{old}/mlruns/uri%20form/ghi/artifacts"],
        "s3://bucket/exp": ["s3://bucket/exp/jkl/artifacts"],
        f"{tmp_path}/elsewhere/mlruns/kept": [f"{tmp_path}/elsewhere/mlruns/kept/mno/artifacts"],
        "mlflow-artifacts:/7": [],
    })
    (new / "mlruns" / "study" / "abc" / "artifacts").mkdir(parents=True)
    (tmp_path / "elsewhere" / "mlruns" / "kept").mkdir(parents=True)  # exists, no other store: on purpose
    uri = sqlite_uri(db)

    (move,) = moved(uri)
    assert (move.old_root, move.new_root, move.why, move.found) == (old, new, "gone", True)
    assert move.counts["experiments"] == 3 and move.counts["runs"] == 3
    before = stored(db)
    assert relocate(uri, dry_run=True)[1] == 6 and stored(db) == before
    moves, rewritten = relocate(uri)
    assert rewritten == 6 and [m.old_root for m in moves] == [old]
    assert stored(db) == [
        f"{new}/mlruns/study", f"{new}/mlruns/0", (new / "mlruns" / "uri form").as_uri(), "s3://bucket/exp",
        f"{tmp_path}/elsewhere/mlruns/kept", "mlflow-artifacts:/7",
        f"{new}/mlruns/study/abc/artifacts", f"{new}/mlruns/study/def/artifacts",
        (new / "mlruns" / "uri form" / "ghi" / "artifacts").as_uri(), "s3://bucket/exp/jkl/artifacts",
        f"{tmp_path}/elsewhere/mlruns/kept/mno/artifacts"]
    assert moved(uri) == [] and relocate(uri) == ([], 0)  # idempotent


def test_relocate_takes_a_copy_off_the_original_stores_folder(tmp_path):
    from dlbench.tracking.relocate import moved, not_in_place, relocate

    original, copy = tmp_path / "original", tmp_path / "copy"
    locations = {f"{original}/mlruns/s": [f"{original}/mlruns/s/abc/artifacts"]}
    make_store(original, locations)
    (original / "mlruns" / "s" / "abc" / "artifacts").mkdir(parents=True)
    shutil.copytree(original, copy)
    assert moved(sqlite_uri(original / "mlflow.db")) == []  # the original is in place
    uri = sqlite_uri(copy / "mlflow.db")
    (move,) = moved(uri)
    assert move.why.startswith("another store's, ") and move.found
    assert "dlbench relocate --tracking-uri" in not_in_place(uri, "dlbench report")
    relocate(uri)
    assert stored(copy / "mlflow.db") == [f"{copy}/mlruns/s", f"{copy}/mlruns/s/abc/artifacts"]
    assert stored(original / "mlflow.db") == [f"{original}/mlruns/s", f"{original}/mlruns/s/abc/artifacts"]
    assert not_in_place(uri, "dlbench report") is None


def test_relocate_leaves_a_pointer_into_another_stores_folder_that_has_nothing_here(tmp_path):
    from dlbench.tracking.relocate import moved

    # MLflow's Default experiment of a store first opened from another folder with a store of its own
    make_store(tmp_path / "other", {})
    db = make_store(tmp_path / "mine", {f"{tmp_path}/other/mlruns/0": []})
    (tmp_path / "other" / "mlruns").mkdir()
    assert moved(sqlite_uri(db)) == []


def test_relocate_leaves_locations_whose_artifacts_are_not_beside_the_database(tmp_path):
    from dlbench.errors import UserError
    from dlbench.tracking.relocate import moved, not_in_place, relocate

    old = tmp_path / "old"
    db = make_store(tmp_path / "lone", {f"{old}/mlruns/s": [f"{old}/mlruns/s/abc/artifacts"]})  # the file alone
    uri = sqlite_uri(db)
    (move,) = moved(uri)
    assert not move.found
    assert relocate(uri)[1] == 0 and stored(db) == [f"{old}/mlruns/s", f"{old}/mlruns/s/abc/artifacts"]
    assert "copy the store's whole folder" in not_in_place(uri, "the UI")
    with pytest.raises(UserError, match="tracking server"):
        relocate("http://127.0.0.1:5000")
    with pytest.raises(UserError, match="not one"):
        relocate("postgresql://db/mlflow")
