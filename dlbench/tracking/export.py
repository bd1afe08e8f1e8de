"""``dlbench export``: a study run, every run under it (their records, metric histories and
artifacts), the environment, the data version and the local plugin files gathered, checked and
written as one archive (its format: :mod:`dlbench.tracking.archive`)."""

from __future__ import annotations

import json
import platform
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import dlbench
from dlbench.datastore import pointer_for
from dlbench.errors import UserError
from dlbench.paths import cannot_write, folder_name, sqlite_file
from dlbench.settings import ExportOptions
from dlbench.tracking.archive import ENDED, FORMAT, IMPORT_COMPLETE, IMPORTED_FROM, VERSION, write_zip
from dlbench.tracking.reader import READ_THREADS, find_study_run
from dlbench.tracking.relocate import require_in_place
from dlbench.tracking.server import require_reachable
from dlbench.tracking.store import metric_points, search_all

# the versions and machine a run records (provenance.environment, code_version, the run's settings)
ENVIRONMENT_TAGS = ("dlbench.version", "dlbench.torch_version", "dlbench.python_version", "dlbench.platform",
                    "dlbench.device", "dlbench.device_name", "dlbench.torch_threads", "dlbench.cuda_version",
                    "dlbench.cudnn_version", "dlbench.deterministic", "dlbench.git_commit", "dlbench.git_dirty",
                    "mlflow.source.git.commit")
DATA_TAGS = ("dlbench.data_dvc", "dlbench.data_dvc_md5", "dlbench.data_matches_dvc", "dlbench.data_check")


@dataclass(frozen=True)
class Exported:
    """What ``dlbench export`` wrote: the archive, the study run, how many runs and files, the
    archive's size, the manifest's SHA-256, the runs that were still RUNNING, and where the
    plugin files and the data came from (a sentence each)."""

    path: Path
    study_run_id: str
    experiment: str
    runs: int
    files: int
    size: int
    sha256: str
    running: int
    plugins: str
    data: str


def export_archive(options: ExportOptions) -> Exported:
    """Write the study run ``options.run_id`` (none: the latest, of ``options.experiment`` when
    given) with every run under it to one zip archive; see the module's docstring."""
    uri = options.tracking_uri
    require_reachable(uri)
    if (db := sqlite_file(uri)) is not None and not db.is_file():  # MLflow would make an empty one
        raise UserError(f"--tracking-uri {uri}: no such database file ({db.absolute()}); give the store the study "
                        "ran into, e.g. --tracking-uri sqlite:////path/to/mlflow.db")
    require_in_place(uri, "dlbench export")  # a moved store would give another folder's artifacts
    client = MlflowClient(uri)
    study = _study_run(client, options)
    experiment = client.get_experiment(study.info.experiment_id).name
    output = Path(options.output or f"{folder_name(experiment)}-{study.info.run_id[:8]}.zip")
    _check_output(output, options.force)
    runs = runs_of_study(client, study)
    _refuse_half_imported(runs, options)
    plugins_folder, plugins = plugin_files(options.plugins_dir)
    data, data_files = data_records(runs, options)
    with tempfile.TemporaryDirectory(prefix="dlbench-export-") as tmp:
        members = staged_runs(client, runs, experiment, Path(tmp))
        members |= _staged_json(Path(tmp), {"environment.json": environment_record(runs, members),
                                            "data/hashes.json": data})
        members |= data_files | plugins
        attached = any(name.startswith(f"runs/{study.info.run_id}/artifacts/plugins/") for name in members)
        manifest = {
            "format": FORMAT, "version": VERSION, "dlbench_version": dlbench.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source_tracking_uri": public_uri(uri), "study_run_id": study.info.run_id, "experiment": experiment,
            "runs": [r.info.run_id for r in runs],
            "plugins": {"folder": str(plugins_folder.resolve()) if plugins_folder else None, "files": sorted(plugins),
                        "attached_to_study_run": attached},
            "data": {"pointer": next((n for n in data_files if n.endswith(".dvc")), None),
                     "prepared": "data/files/" if options.with_data else None, "data_dir": str(options.data_dir)},
        }
        sha = write_zip(output, members, manifest)
    running = sum(r.info.status not in ENDED for r in runs)
    return Exported(output, study.info.run_id, experiment, len(runs), len(members), output.stat().st_size, sha,
                    running, _plugins_said(plugins_folder, plugins, attached), _data_said(data_files, options))


def staged_runs(client: MlflowClient, runs, experiment: str, staging: Path) -> dict[str, Path]:
    """runs/<id>/run.json and runs/<id>/artifacts/ of every run, written into ``staging``: the
    archive's name -> the file of each."""
    histories = metric_histories(client, runs)
    for run in runs:
        folder = staging / "runs" / run.info.run_id
        (folder / "artifacts").mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(folder / "artifacts"))
        _write_json(folder / "run.json", run_record(run, experiment, histories[run.info.run_id]))
    return {path.relative_to(staging).as_posix(): path for path in sorted(staging.rglob("*")) if path.is_file()}


def _staged_json(staging: Path, documents: dict[str, object]) -> dict[str, Path]:
    """The archive's own JSON members (name -> value) written into ``staging``: name -> file."""
    for name, value in documents.items():
        _write_json(staging / name, value)
    return {name: staging / name for name in documents}


def _study_run(client: MlflowClient, options: ExportOptions):
    """The study run to export: RUN_ID, checked to be a study run (a trial's names its study
    run), else the latest study run (of --experiment)."""
    if options.run_id and options.experiment:
        raise UserError("name the study run once: RUN_ID or --experiment (the latest study run of that experiment)")
    if not options.run_id:
        return client.get_run(find_study_run(options.tracking_uri, experiment=options.experiment))
    try:
        run = client.get_run(options.run_id)
    except MlflowException:
        raise UserError(f"RUN_ID {options.run_id}: no such run in {options.tracking_uri}. Check the id and "
                        "--tracking-uri; without a RUN_ID, `dlbench export` exports the latest study run.") from None
    tags, name = run.data.tags, run.info.run_name
    if tags.get("dlbench.role") == "study":
        return run
    parent, role = tags.get("mlflow.parentRunId"), tags.get("dlbench.role") or "MLflow"
    if parent:
        raise UserError(f"RUN_ID {options.run_id} is the {role} run {name!r} of the study run {parent}; a study is "
                        f"exported whole, from its study run: dlbench export {parent}")
    raise UserError(f"RUN_ID {options.run_id} ({name!r}) is not a dlbench study run (it has no tag dlbench.role = "
                    "study): `dlbench export` takes the parent run `dlbench run` made (its id is printed as "
                    "\"MLflow parent run\")")


def _refuse_half_imported(runs, options: ExportOptions) -> None:
    """A study whose import into this store was cut short is not exported: its runs lack
    metrics and artifacts that the same ``dlbench import`` adds when run again."""
    half = [r for r in runs if IMPORTED_FROM in r.data.tags and r.data.tags.get(IMPORT_COMPLETE) != "true"]
    if half:
        raise UserError(f"{len(half)} of the {len(runs)} runs of this study run were imported into "
                        f"{options.tracking_uri} by a `dlbench import` that was cut short (e.g. run "
                        f"{half[0].info.run_id}: tag {IMPORTED_FROM} without {IMPORT_COMPLETE}); they lack what the "
                        "archive held. Run the same `dlbench import` again (it completes them), then export.")


def _check_output(output: Path, force: bool) -> None:
    """An existing archive is replaced only with --force (as ``dvc get -o`` does): an archive sent
    with a paper is not lost to a mistyped command. The folder must exist."""
    if output.is_dir():
        raise UserError(f"-o {output}: is a folder; give the archive's file name, e.g. -o {output / 'study.zip'}")
    if output.exists() and not force:
        raise UserError(f"-o {output}: the file exists; add --force to replace it, or give another name")
    folder = output.absolute().parent
    if not folder.is_dir():
        raise UserError(f"-o {output}: no folder {folder} to write it in")
    if why := cannot_write(folder):
        raise UserError(f"-o {output}: the archive cannot be written ({why}); give a path in a writable folder")


def runs_of_study(client: MlflowClient, study) -> list:
    """The study run, then every active run under it (any role: trials, tuning trials,
    reproductions), level by level, each level by start time; then the tuning runs of searches
    its final trials name that are not under it (a re-run that skipped a tuned level reports the
    search of an earlier study run: the report reads them, so the archive holds them)."""
    experiment_id = study.info.experiment_id
    runs, seen, level = [study], {study.info.run_id}, [study.info.run_id]
    while level:
        children = [c for parent in level for c in search_all(client, experiment_id, {"mlflow.parentRunId": parent})
                    if c.info.run_id not in seen]
        children.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
        runs += children
        seen |= {c.info.run_id for c in children}
        level = [c.info.run_id for c in children]
    named = {r.data.tags["dlbench.search"] for r in runs
             if r.data.tags.get("dlbench.role") == "trial" and r.data.tags.get("dlbench.search")}
    held = {r.data.tags.get("dlbench.search") for r in runs if r.data.tags.get("dlbench.role") == "tuning"}
    for search in sorted(named - held):
        found = search_all(client, experiment_id, {"dlbench.role": "tuning", "dlbench.search": search})
        for run in sorted(found, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
            if run.info.run_id not in seen:
                runs.append(run)
                seen.add(run.info.run_id)
    return runs


def metric_histories(client: MlflowClient, runs) -> dict[str, dict[str, list]]:
    """run id -> metric -> every logged value as [step, timestamp, value], in that order
    (``store.metric_points``: one query per metric for a SQL store, requests several at a time
    for a server)."""
    wanted = {r.info.run_id: sorted(r.data.metrics) for r in runs}
    out: dict[str, dict[str, list]] = {run_id: {} for run_id in wanted}
    for run_id, key, m in metric_points(client, wanted, READ_THREADS):
        out[run_id].setdefault(key, []).append([m.step, m.timestamp, m.value])
    for by_key in out.values():
        for history in by_key.values():
            history.sort(key=lambda row: (row[0], row[1]))
    return out


def run_record(run, experiment: str, histories: dict[str, list]) -> dict:
    """What run.json holds of a run: enough to make it again, nothing of the store it was in
    (its artifact location is said, for the reader)."""
    info = run.info
    inputs = getattr(run, "inputs", None)
    datasets = [{"dataset": d.dataset.to_dictionary(), "tags": {t.key: t.value for t in d.tags}}
                for d in (inputs.dataset_inputs if inputs is not None else [])]
    return {"run_id": info.run_id, "run_name": info.run_name, "experiment": experiment, "status": info.status,
            "start_time": info.start_time, "end_time": info.end_time, "lifecycle_stage": info.lifecycle_stage,
            "artifact_uri": info.artifact_uri, "params": dict(run.data.params), "tags": dict(run.data.tags),
            "metrics": histories, "inputs": datasets}


def environment_record(runs, members: dict[str, Path]) -> dict:
    """The study run's versions and machine, each other value the runs under it recorded (a
    trial on another device or worker says so), the installed packages' file, and the
    exporting machine's versions."""
    study, others = runs[0], runs[1:]
    recorded = {k: study.data.tags[k] for k in ENVIRONMENT_TAGS if k in study.data.tags}
    by_runs = {k: sorted({r.data.tags[k] for r in others if k in r.data.tags}) for k in ENVIRONMENT_TAGS}
    packages = [f"runs/{r.info.run_id}/artifacts/requirements.txt" for r in runs]
    return {"study_run": recorded, "runs": {k: v for k, v in by_runs.items() if v},
            "installed_packages": next((p for p in packages if p in members), None),
            "exported_by": {"dlbench": dlbench.__version__, "mlflow": mlflow.__version__,
                            "python": platform.python_version(), "platform": platform.platform()}}


def data_records(runs, options: ExportOptions) -> tuple[dict, dict[str, Path]]:
    """data/hashes.json (each run's dataset and its hash, the data.dvc values the runs recorded)
    and the data files: the DVC pointer of the data folder when there is one, the prepared
    datasets with --with-data."""
    hashes = {r.info.run_id: {"dataset": r.data.params.get("dataset.name"), "dataset_hash": r.data.tags[
        "dlbench.dataset_hash"]} for r in runs if "dlbench.dataset_hash" in r.data.tags}
    recorded = {k: sorted({r.data.tags[k] for r in runs if k in r.data.tags}) for k in DATA_TAGS}
    files: dict[str, Path] = {}
    pointer = pointer_for(Path(options.data_dir))
    if pointer.is_file():
        files[f"data/{pointer.name}"] = pointer
    if options.with_data:
        folder = Path(options.data_dir)
        if not folder.is_dir():
            raise UserError(f"--with-data: no prepared data in {folder} (no such folder); prepare it with `dlbench "
                            "data prepare`, name it with --data-dir DIR, or leave --with-data out")
        files |= {f"data/files/{p.relative_to(folder).as_posix()}": p for p in sorted(folder.rglob("*"))
                  if p.is_file()}
    return {"runs": hashes, "recorded": {k: v for k, v in recorded.items() if v}}, files


def plugin_files(plugins_dir: Path | None) -> tuple[Path | None, dict[str, Path]]:
    """The local plugin files the commands load from the folder (``*.py`` not starting with
    ``_``): of ``plugins_dir``, which must exist, else of plugins/ in the working directory when
    there is one."""
    folder = plugins_dir if plugins_dir is not None else Path("plugins")
    if not folder.is_dir():
        if plugins_dir is not None:
            raise UserError(f"--plugins-dir {plugins_dir}: no such folder")
        return None, {}
    return folder, {f"plugins/{p.name}": p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}


def _plugins_said(folder: Path | None, files: dict[str, Path], attached: bool) -> str:
    """Where the archive's plugin files came from, in words, for the export's summary."""
    held = "the study run's own plugins/ artifacts" if attached else "no plugin files attached to the study run"
    if folder is None:
        return f"{held}; no plugins/ folder here"
    return f"{held}; {len(files)} local plugin file(s) of {folder}/"


def _data_said(files: dict[str, Path], options: ExportOptions) -> str:
    """What of the data went in, in words, for the export's summary."""
    pointer = pointer_for(Path(options.data_dir))
    said = f"the DVC pointer {pointer}" if f"data/{pointer.name}" in files else f"no DVC pointer {pointer}"
    if options.with_data:
        said += f", {sum(n.startswith('data/files/') for n in files)} prepared data file(s) of {options.data_dir}/"
    return said + ", the runs' dataset hashes"


def public_uri(uri: str) -> str:
    """The tracking URI without a user name or password (an archive travels)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return uri


def _write_json(path: Path, value) -> None:
    """Indented UTF-8 JSON: an archive's reader opens run.json and the manifest in an editor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
