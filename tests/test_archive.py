"""`dlbench export` and `dlbench import`: a study as one archive, recreated in another store.

One tiny study (one factor, two levels, two seeds, a claim; a local plugin file beside it) is
run by a real `dlbench run` and exported once for the module. The tests import the archive into
fresh SQLite stores and into a real `mlflow server`, compare every run with its original
(params, tags, every metric value with its step and time, artifacts), rebuild the report from
the import, cut an import short, and feed the import damaged, altered and hostile archives.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import stat
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY_BASELINE, cli_env, copy_store, describe_result, run_cli, sqlite_uri, write_plugin, write_study
from mlflow.tracking import MlflowClient

from dlbench import session
from dlbench.errors import UserError
from dlbench.settings import ExportOptions, ImportOptions
from dlbench.tracking.archive import IMPORT_COMPLETE, IMPORT_TAGS, IMPORTED_FROM

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

STUDY = TINY_BASELINE + """\
[study]
name = "archived"
seeds = 2

[studies.dropout]
claims = [{ level = "on", beats = "off" }]
[studies.dropout.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_hidden = 0.2 }] }
"""

# A local plugin that leaves a file behind when it is run with DLBENCH_TEST_MARKER set: set
# around `dlbench import` only, which must never run what an archive holds.
MARKER_PLUGIN = """\
import os
import pathlib

from dlbench import hookimpl

if os.environ.get("DLBENCH_TEST_MARKER"):
    pathlib.Path(os.environ["DLBENCH_TEST_MARKER"]).write_text("this plugin file was run")


def untouched(model, data):
    \"\"\"An initializer that leaves the model as it is (tests: a local plugin file to archive).\"\"\"


@hookimpl
def dlbench_register_initializers(register):
    register("untouched", untouched)
"""
RUNS = 5  # the study run and its four trials


@dataclass
class Source:
    root: Path
    uri: str
    study_id: str
    archive: Path
    exported: str  # what `dlbench export` printed


@pytest.fixture(scope="module")
def source(tmp_path_factory, mlflow_template) -> Source:
    root = tmp_path_factory.mktemp("archive")
    copy_store(mlflow_template, root)
    write_study(root, STUDY)
    write_plugin(root, "marker", MARKER_PLUGIN)
    uri = sqlite_uri(root / "mlflow.db")
    proc = run_cli(["run", "study.toml", "--tracking-uri", uri, "--device", "cpu"], cwd=root, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    study_id = re.search(r"MLflow parent run: ([0-9a-f]{32})", proc.stdout).group(1)
    archive = root / "study.zip"
    proc = run_cli(["export", study_id, "-o", archive, "--tracking-uri", uri], cwd=root, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    return Source(root, uri, study_id, archive, proc.stdout)


def import_cli(archive: Path, uri: str, cwd: Path, marker: Path | None = None):
    env = cli_env({"DLBENCH_TEST_MARKER": str(marker)} if marker else None, autoload=False)
    return run_cli(["import", archive, "--tracking-uri", uri], cwd=cwd, env=env)


def imported_study_id(proc) -> str:
    return re.search(r"study run: ([0-9a-f]{32})", proc.stdout).group(1)


def runs_under(client: MlflowClient, study_id: str) -> list:
    """The study run and every active run under it, level by level."""
    experiment_id = client.get_run(study_id).info.experiment_id
    runs, level = [client.get_run(study_id)], [study_id]
    while level:
        children = [r for parent in level
                    for r in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")]
        runs += children
        level = [r.info.run_id for r in children]
    return runs


def described(client: MlflowClient, run, ids: dict[str, str]) -> dict:
    """What an import must keep of a run, with the run ids its tags name through ``ids``."""
    tags = {k: ids.get(v, v) for k, v in run.data.tags.items() if k not in IMPORT_TAGS}
    histories = {k: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, k))
                 for k in run.data.metrics}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run.info.run_id, "", tmp))
        artifacts = {p.relative_to(local).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in local.rglob("*") if p.is_file()}
    inputs = [(d.dataset.to_dictionary(), {t.key: t.value for t in d.tags}) for d in run.inputs.dataset_inputs]
    info = run.info
    return {"name": info.run_name, "status": info.status, "start": info.start_time, "end": info.end_time,
            "user": info.user_id, "params": dict(run.data.params), "tags": tags, "metrics": dict(run.data.metrics),
            "histories": histories, "artifacts": artifacts, "inputs": inputs}


def assert_same_runs(source: Source, uri: str, study_id: str) -> dict[str, str]:
    """The runs under ``study_id`` in ``uri`` are the source's, one for one; returns original id -> imported id."""
    original, copy = MlflowClient(source.uri), MlflowClient(uri)
    originals, copies = runs_under(original, source.study_id), runs_under(copy, study_id)
    ids = {r.data.tags[IMPORTED_FROM]: r.info.run_id for r in copies}
    assert len(copies) == RUNS and sorted(ids) == sorted(r.info.run_id for r in originals)
    assert all(r.data.tags.get(IMPORT_COMPLETE) == "true" for r in copies)
    for run in originals:
        twin = copy.get_run(ids[run.info.run_id])
        assert described(copy, twin, {}) == described(original, run, ids), run.info.run_name
    trials = [r for r in copies if r.data.tags.get("dlbench.role") == "trial"]
    assert len(trials) == RUNS - 1 and all(r.data.tags["mlflow.parentRunId"] == study_id for r in trials)
    return ids


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory, mlflow_template):
    """The archive imported by `dlbench import` into a fresh SQLite store."""
    folder = tmp_path_factory.mktemp("imported")
    copy_store(mlflow_template, folder)
    uri = sqlite_uri(folder / "mlflow.db")
    marker = folder / "plugin-was-run"
    proc = import_cli(source.archive, uri, folder, marker)
    assert proc.returncode == 0, describe_result(proc)
    assert not marker.exists(), "dlbench import ran a plugin file of the archive"
    return folder, uri, proc


# -- export -----------------------------------------------------------------------------------------


def test_the_archive_holds_the_runs_environment_data_hashes_and_plugins_each_with_its_checksum(source):
    assert f"exported study run {source.study_id}" in source.exported and f"{RUNS} runs" in source.exported
    with zipfile.ZipFile(source.archive) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["format"] == "dlbench-study-archive" and manifest["version"] == 1
        assert manifest["runs"][0] == source.study_id == manifest["study_run_id"] and len(manifest["runs"]) == RUNS
        assert manifest["experiment"] == "archived"
        names = set(zf.namelist()) - {"manifest.json"}
        assert names == set(manifest["files"])
        for name in names:
            assert hashlib.sha256(zf.read(name)).hexdigest() == manifest["files"][name]["sha256"], name
        assert zf.read("plugins/marker.py").decode() == MARKER_PLUGIN
        assert manifest["plugins"]["files"] == ["plugins/marker.py"]
        assert f"runs/{source.study_id}/artifacts/study.toml" in names
        environment = json.loads(zf.read("environment.json"))
        hashes = json.loads(zf.read("data/hashes.json"))
    assert environment["installed_packages"] in names
    client = MlflowClient(source.uri)
    study = client.get_run(source.study_id)
    assert environment["study_run"]["dlbench.torch_version"] == study.data.tags["dlbench.torch_version"]
    trials = runs_under(client, source.study_id)[1:]
    assert hashes["runs"] == {r.info.run_id: {"dataset": "mnist1d", "dataset_hash": r.data.tags["dlbench.dataset_hash"]}
                              for r in trials}


def test_export_of_a_trial_run_names_its_study_run(source):
    trial = runs_under(MlflowClient(source.uri), source.study_id)[1]
    out = source.root / "trial.zip"
    proc = run_cli(["export", trial.info.run_id, "-o", out, "--tracking-uri", source.uri], cwd=source.root,
                   env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr, describe_result(proc)
    assert f"dlbench export {source.study_id}" in proc.stderr, describe_result(proc)
    assert not out.exists()


def test_an_existing_archive_is_replaced_only_with_force(source, tmp_path):
    out = tmp_path / "kept.zip"
    out.write_bytes(b"an archive sent with a paper")
    given = {"run_id": source.study_id, "output": out, "tracking_uri": source.uri,
             "plugins_dir": source.root / "plugins", "data_dir": source.root / "data"}
    with pytest.raises(UserError, match="--force"):
        session.export_study(ExportOptions(**given))
    assert out.read_bytes() == b"an archive sent with a paper"
    done = session.export_study(ExportOptions(**given, force=True))
    assert done.runs == RUNS and zipfile.is_zipfile(out)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.zip"]  # no partial file left beside it


def test_the_data_pointer_and_with_data_the_prepared_files_go_in(source, tmp_path):
    data = tmp_path / "prepared"
    (data / "mnist1d").mkdir(parents=True)
    (data / "mnist1d" / "x_train.npy").write_bytes(b"\x93NUMPY arrays")
    (tmp_path / "prepared.dvc").write_text("outs:\n- md5: abc.dir\n  path: prepared\n")
    out = tmp_path / "with-data.zip"
    done = session.export_study(ExportOptions(run_id=source.study_id, output=out, tracking_uri=source.uri,
                                              data_dir=data, with_data=True, plugins_dir=source.root / "plugins"))
    with zipfile.ZipFile(out) as zf:
        assert zf.read("data/prepared.dvc") == (tmp_path / "prepared.dvc").read_bytes()
        assert zf.read("data/files/mnist1d/x_train.npy") == b"\x93NUMPY arrays"
    assert "prepared.dvc" in done.data


# -- import -----------------------------------------------------------------------------------------


def test_import_recreates_every_run_with_its_parent_metrics_tags_and_artifacts(source, imported):
    _, uri, proc = imported
    assert f"{RUNS} runs imported, 0 already present" in proc.stdout, describe_result(proc)
    assert_same_runs(source, uri, imported_study_id(proc))


def test_importing_twice_adds_nothing(source, imported):
    _, uri, first = imported
    done = session.import_study(ImportOptions(archive=source.archive, tracking_uri=uri))
    assert (done.imported, done.present, done.study_run_id) == (0, RUNS, imported_study_id(first))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("archived")
    assert len(client.search_runs([experiment.experiment_id])) == RUNS
    back = session.import_study(ImportOptions(archive=source.archive, tracking_uri=source.uri))
    assert (back.imported, back.present, back.study_run_id) == (0, RUNS, source.study_id)  # the originals are there


def test_import_into_another_experiment_by_name(source, tmp_path, new_store):
    uri = sqlite_uri(new_store(tmp_path))
    done = session.import_study(ImportOptions(archive=source.archive, tracking_uri=uri, experiment="from a paper"))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("from a paper")
    assert done.imported == RUNS and client.get_run(done.study_run_id).info.experiment_id == experiment.experiment_id
    assert client.get_experiment_by_name("archived") is None
    assert Path(experiment.artifact_location).parent.resolve() == (tmp_path / "mlruns").resolve()  # beside the store


def report_of(uri: str, study_id: str, cwd: Path, folder: str) -> Path:
    proc = run_cli(["report", "--run-id", study_id, "--tracking-uri", uri, "--reports-dir", folder, "--no-attach"],
                   cwd=cwd, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    return cwd / folder / "dropout"


def rows(path: Path, ids: dict[str, str]) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return sorted(({k: ids.get(v, v) for k, v in row.items()} for row in csv.DictReader(f)),
                      key=lambda row: json.dumps(row, sort_keys=True))


def test_the_report_of_the_import_is_the_report_of_the_original(source, imported):
    folder, uri, proc = imported
    study_id = imported_study_id(proc)
    ids = {r.data.tags[IMPORTED_FROM]: r.info.run_id for r in runs_under(MlflowClient(uri), study_id)}
    original = source.root / "reports" / "dropout"  # as `dlbench run` wrote it
    copy = report_of(uri, study_id, folder, "reports")  # another folder, machine-like: the study file is not there
    for table in ("summary.csv", "claims.csv", "comparisons.csv"):
        assert (copy / table).read_bytes() == (original / table).read_bytes(), table
    for table in ("trials.csv", "epochs.csv", "diagnostics.csv"):  # the same rows, the run ids the imported ones
        assert rows(copy / table, {}) == rows(original / table, ids), table


def test_import_into_an_mlflow_server(source, mlflow_server):
    proc = import_cli(source.archive, mlflow_server.uri, mlflow_server.directory)
    assert proc.returncode == 0, describe_result(proc)
    assert f"{RUNS} runs imported" in proc.stdout and "View run" not in proc.stdout  # one line per run otherwise
    assert_same_runs(source, mlflow_server.uri, imported_study_id(proc))
    again = session.import_study(ImportOptions(archive=source.archive, tracking_uri=mlflow_server.uri))
    assert (again.imported, again.present) == (0, RUNS)


def test_an_import_cut_short_is_completed_without_a_duplicate(source, tmp_path, new_store, monkeypatch):
    uri = sqlite_uri(new_store(tmp_path))
    calls = []

    def dies_on_the_third(self, run_id, local_dir, artifact_path=None):
        calls.append(run_id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C (or a kill) in the middle of an import
        return logs(self, run_id, local_dir, artifact_path)

    logs = MlflowClient.log_artifacts
    monkeypatch.setattr(MlflowClient, "log_artifacts", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        session.import_study(ImportOptions(archive=source.archive, tracking_uri=uri))
    monkeypatch.setattr(MlflowClient, "log_artifacts", logs)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("archived").experiment_id
    half = [r for r in client.search_runs([experiment_id]) if r.data.tags.get(IMPORT_COMPLETE) != "true"]
    assert len(client.search_runs([experiment_id])) == RUNS and len(half) == RUNS - 2  # two made whole
    study_id = next(r.info.run_id for r in client.search_runs([experiment_id])
                    if r.data.tags[IMPORTED_FROM] == source.study_id)
    with pytest.raises(UserError, match="cut short"):  # a half-imported study is not exported
        session.export_study(ExportOptions(run_id=study_id, output=tmp_path / "half.zip", tracking_uri=uri))

    done = session.import_study(ImportOptions(archive=source.archive, tracking_uri=uri))
    assert (done.imported, done.replaced, done.present) == (RUNS - 2, RUNS - 2, 2)
    assert len(client.search_runs([experiment_id])) == RUNS  # the half-made runs deleted, made again
    assert_same_runs(source, uri, done.study_run_id)


# -- damaged, altered and hostile archives ---------------------------------------------------------


def rewritten(archive: Path, out: Path, change=lambda name, data: data, extra=()) -> Path:
    """A copy of ``archive`` with each member's bytes through ``change`` (None: left out) and
    ``extra`` members (a ZipInfo or a name, and bytes) added; zipfile writes each CRC anew."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info.filename, data)
        for name, data in extra:
            dst.writestr(name, data)
    return out


def a_run_json(archive: Path) -> str:
    with zipfile.ZipFile(archive) as zf:
        return next(n for n in zf.namelist() if n.endswith("/run.json"))


def flipped_in_place(archive: Path, out: Path) -> Path:
    """A copy with one byte of a member's compressed data changed, its CRC left as it was."""
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(a_run_json(archive))
    offset = info.header_offset
    name_length, extra_length = struct.unpack("<HH", raw[offset + 26:offset + 30])
    raw[offset + 30 + name_length + extra_length + info.compress_size // 2] ^= 0xFF
    out.write_bytes(bytes(raw))
    return out


def one_byte_changed(name: str, data: bytes) -> bytes:
    """The bytes of one run.json with one byte in the middle changed (others as they are)."""
    if not name.endswith("/run.json"):
        return data
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


DAMAGES = {
    "a byte changed, its CRC not": (lambda a, o: flipped_in_place(a, o), "damaged or altered"),
    "a byte changed, its CRC too": (lambda a, o: rewritten(a, o, one_byte_changed),
                                    "differs from what was exported"),
    "a member added": (lambda a, o: rewritten(a, o, extra=[("runs/extra.txt", b"x")]), "does not list"),
    "a member removed": (lambda a, o: rewritten(a, o, lambda n, d: None if n == "environment.json" else d),
                         "lacks 'environment.json'"),
    "a path out of the folder": (lambda a, o: rewritten(a, o, extra=[("../evil", b"x")]), "'..'"),
    "an absolute path": (lambda a, o: rewritten(a, o, extra=[("/tmp/evil", b"x")]), "absolute path"),
    "a symbolic link": (lambda a, o: rewritten(a, o, extra=[(symlink("plugins/link"), b"/etc/passwd")]),
                        "symbolic link"),
    "no manifest": (lambda a, o: rewritten(a, o, lambda n, d: None if n == "manifest.json" else d),
                    "has no manifest.json"),
    "not a zip": (lambda a, o: (o.write_bytes(a.read_bytes()[:4000]), o)[1], "not a zip archive"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_or_altered_archive_is_refused_and_nothing_is_written(source, tmp_path, new_store, damage):
    make, expected = DAMAGES[damage]
    archive = make(source.archive, tmp_path / "altered.zip")
    db = new_store(tmp_path)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(UserError) as refused:
        session.import_study(ImportOptions(archive=archive, tracking_uri=sqlite_uri(db)))
    assert expected in str(refused.value) and "Nothing was imported" in str(refused.value)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not (tmp_path / "mlruns").exists()


def test_the_command_refuses_an_altered_archive_with_exit_2_and_makes_no_store(source, tmp_path):
    archive = rewritten(source.archive, tmp_path / "evil.zip", extra=[("../evil", b"x")])
    db = tmp_path / "store" / "mlflow.db"
    proc = import_cli(archive, sqlite_uri(db), tmp_path)
    assert proc.returncode == 2, describe_result(proc)
    assert proc.stderr.startswith(f"Error: {archive}: its member '../evil'"), describe_result(proc)
    assert "Traceback" not in proc.stderr
    assert not db.parent.exists() and not (tmp_path.parent / "evil").exists()
