"""A study as one archive: ``dlbench export`` writes a study run, every run under it and what
reproducing it needs into one zip file; ``dlbench import`` recreates those runs in any store.

A paper's reader, a reviewer or a colleague gets the study as it was logged, not a table of
it: the runs with their parent/child structure, every logged value of every metric at its step
and time, the tags, params and artifacts (the study file, the reports, each trial's config and
installed packages), and beside them the environment, the data version and the local plugins.
Imported, ``dlbench report`` and ``dlbench compare`` read the runs as they read the originals.

Layout (format ``dlbench-study-archive``, version 1)::

    manifest.json                what the archive holds: the format and version, the study run, the
                                 runs (parents first) and every other member with its SHA-256 and size
    runs/<run id>/run.json       the run: name, experiment, status, times, params, tags, dataset
                                 inputs and each metric's history as [step, timestamp ms, value] rows
    runs/<run id>/artifacts/...  its artifacts, as MLflow holds them
    environment.json             the versions and machine the study ran on, and the exporting one's
    data/hashes.json             each run's dataset hash and the data.dvc md5 the runs recorded
    data/<data dir>.dvc          the DVC pointer of the data folder, when there is one
    data/files/...               the prepared datasets (``--with-data``)
    plugins/<name>.py            the local plugin files of the plugins folder (never run by an import)

An import trusts nothing in the archive until all of it is checked: a zip, a manifest of this
format, every member listed with the size and SHA-256 it has, none named outside the folder it
unpacks into (absolute, ``..``, a drive letter) or a link. Only then does it write to the store.
The checksums catch a damaged or altered member; an archive rewritten whole, manifest included,
is caught by comparing the manifest's SHA-256 (printed by both commands, and tagged on every
imported run as ``dlbench.imported_archive``) with the one its author published.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (MAX_BATCH_LOG_REQUEST_SIZE, MAX_DATASETS_PER_BATCH, MAX_ENTITIES_PER_BATCH,
                                     MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH)

import dlbench
from dlbench.datastore import pointer_for
from dlbench.errors import UserError
from dlbench.paths import artifact_location, cannot_write, folder_name, sqlite_file
from dlbench.settings import ExportOptions, ImportOptions
from dlbench.tracking import views
from dlbench.tracking.base import EXPERIMENT_KIND
from dlbench.tracking.lock import store_lock
from dlbench.tracking.reader import READ_THREADS, find_study_run
from dlbench.tracking.relocate import require_in_place
from dlbench.tracking.server import require_reachable
from dlbench.tracking.store import search_all
from dlbench.tracking.study_run import PROCESS_TAG

FORMAT = "dlbench-study-archive"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 2**20  # a manifest lists files: ~150 bytes each
RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")  # an MLflow run id is 32 hex digits; a run id names a folder
ENDED = ("FINISHED", "FAILED", "KILLED")
COMPRESSED = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".pdf", ".zip", ".gz", ".bz2", ".xz", ".zst", ".npz"}  # stored as is
DATASET_FIELDS = {"name", "digest", "source_type", "source", "schema", "profile"}  # mlflow.entities.Dataset's  # MLflow's end states, kept; a RUNNING run is imported as KILLED

IMPORTED_FROM = "dlbench.imported_from"  # the run's id in the store it was exported from
IMPORTED_ARCHIVE = "dlbench.imported_archive"  # the SHA-256 of the archive's manifest.json
IMPORT_COMPLETE = "dlbench.import_complete"  # "true", set last: a run without it is a half-finished import
IMPORTED_STATUS = "dlbench.imported_status"  # the original status when it was not an end state (RUNNING)
IMPORT_TAGS = (IMPORTED_FROM, IMPORTED_ARCHIVE, IMPORT_COMPLETE, IMPORTED_STATUS)  # of this import, not an earlier one

# the versions and machine a run records (provenance.environment, code_version, the run's settings)
ENVIRONMENT_TAGS = ("dlbench.version", "dlbench.torch_version", "dlbench.python_version", "dlbench.platform",
                    "dlbench.device", "dlbench.device_name", "dlbench.torch_threads", "dlbench.cuda_version",
                    "dlbench.cudnn_version", "dlbench.deterministic", "dlbench.git_commit", "dlbench.git_dirty",
                    "mlflow.source.git.commit")
DATA_TAGS = ("dlbench.data_dvc", "dlbench.data_dvc_md5", "dlbench.data_matches_dvc", "dlbench.data_check")


# -- export ---------------------------------------------------------------------------------------


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
    """run id -> metric -> every logged value as [step, timestamp, value], in that order. As
    ``store.histories_of_runs`` reads them (one query per metric for a SQL store, requests
    several at a time for a server), with the timestamps it leaves out."""
    wanted = {r.info.run_id: sorted(r.data.metrics) for r in runs}
    out: dict[str, dict[str, list]] = {run_id: {} for run_id in wanted}
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None)
    if bulk is not None:
        by_key: dict[str, list[str]] = {}
        for run_id, names in wanted.items():
            for key in names:
                by_key.setdefault(key, []).append(run_id)
        for key, run_ids in by_key.items():
            for i in range(0, len(run_ids), 500):  # bounded IN (...) lists
                for m in bulk(run_ids[i:i + 500], key, max_results=None):
                    out[m.run_id].setdefault(key, []).append([m.step, m.timestamp, m.value])
    else:
        pairs = [(run_id, key) for run_id, names in wanted.items() for key in names]
        with ThreadPoolExecutor(READ_THREADS) as pool:
            found = list(pool.map(lambda rk: client.get_metric_history(*rk), pairs))
        for (run_id, key), history in zip(pairs, found):
            out[run_id][key] = [[m.step, m.timestamp, m.value] for m in history]
    for by_key_ in out.values():
        for history in by_key_.values():
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


def write_zip(output: Path, members: dict[str, Path], manifest: dict) -> str:
    """Write the archive beside ``output`` and rename it into place (no half-written archive,
    and an existing one is replaced only once the new one is whole); each member hashed as it
    is written, the manifest last. Returns the manifest's SHA-256."""
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            files = {}
            for name, path in members.items():
                info = zipfile.ZipInfo.from_file(path, name, strict_timestamps=False)
                info.compress_type = zipfile.ZIP_STORED if path.suffix.lower() in COMPRESSED else zipfile.ZIP_DEFLATED
                digest, size = hashlib.sha256(), 0
                with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                        dst.write(chunk)
                files[name] = {"sha256": digest.hexdigest(), "size": size}
            text = (json.dumps(manifest | {"files": files}, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
            zf.writestr(MANIFEST, text)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return hashlib.sha256(text).hexdigest()


# -- checking an archive ----------------------------------------------------------------------------


def refused(archive: Path, why: str) -> UserError:
    """The one message of an archive that is not imported: what is wrong, and that nothing was written."""
    return UserError(f"{archive}: {why}. Nothing was imported.")


def unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why a member could write outside the folder it is unpacked into, or be something other
    than a file or folder; None for a safe one."""
    name = info.filename
    if "\\" in name or "\x00" in name:
        return "holds a backslash or a NUL character"
    if name.startswith("/"):
        return "is an absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "starts with a drive letter"
    if any(part in ("", ".", "..") for part in name.rstrip("/").split("/")):
        return "is a path with an empty, '.' or '..' part"
    mode = stat.S_IFMT(info.external_attr >> 16)
    if mode not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is a symbolic link or a special file"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def read_manifest(archive: Path, zf: zipfile.ZipFile) -> tuple[dict, bytes]:
    """The manifest, checked for this format and version and for the shape of its fields."""
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        raise refused(archive, f"it has no {MANIFEST}: it is not a dlbench study archive (`dlbench export` writes "
                               "one), or it was damaged or altered") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise refused(archive, f"its {MANIFEST} is {info.file_size} bytes, far more than any manifest")
    try:
        text = zf.read(info)
        manifest = json.loads(text)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise refused(archive, f"its {MANIFEST} cannot be read ({exc}): the archive was damaged or altered") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise refused(archive, f"its {MANIFEST} is not that of a dlbench study archive (no \"format\": \"{FORMAT}\")")
    if manifest.get("version") != VERSION:
        raise refused(archive, f"it is a dlbench study archive of format version {manifest.get('version')!r}; this "
                               f"dlbench ({dlbench.__version__}) reads version {VERSION}: import it with the dlbench "
                               "that wrote it, or upgrade dlbench")
    problem = _manifest_problem(manifest)
    if problem:
        raise refused(archive, f"its {MANIFEST} {problem}: the archive was damaged or altered")
    return manifest, text


def _manifest_problem(manifest: dict) -> str | None:
    files, runs = manifest.get("files"), manifest.get("runs")
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
            and v["size"] >= 0 for v in files.values()):
        return "has no \"files\" with a sha256 and a size for each"
    if not isinstance(runs, list) or not runs or not all(isinstance(r, str) and RUN_ID.match(r) for r in runs):
        return "has no list of \"runs\" (run ids)"
    if len(set(runs)) != len(runs) or manifest.get("study_run_id") != runs[0]:
        return "does not list each run once, the study run first"
    if not isinstance(manifest.get("experiment"), str) or not manifest["experiment"]:
        return "names no experiment"
    return None


def check_listing(archive: Path, infos: list[zipfile.ZipInfo], files: dict) -> list[zipfile.ZipInfo]:
    """The archive's files, each listed in the manifest at the size it has, and every listed file
    there; folder entries (a zip tool may add them) hold nothing and are left out."""
    counts = Counter(i.filename for i in infos)
    twice = [name for name, n in counts.items() if n > 1]
    if twice:
        raise refused(archive, f"it holds {twice[0]!r} twice: the archive was altered")
    members = [i for i in infos if not i.is_dir() and i.filename != MANIFEST]
    names = {i.filename for i in members}
    if extra := sorted(names - set(files)):
        raise refused(archive, f"it holds {extra[0]!r}, which its manifest does not list: a file was added to the "
                               "archive after it was exported")
    if missing := sorted(set(files) - names):
        raise refused(archive, f"it lacks {missing[0]!r}, which its manifest lists: a file was removed from the "
                               "archive, or it was damaged")
    for info in members:
        if info.file_size != files[info.filename]["size"]:
            raise refused(archive, f"{info.filename!r} is {info.file_size} bytes, its manifest says "
                                   f"{files[info.filename]['size']}: the archive was damaged or altered")
    return members


def _check_room(archive: Path, members: list[zipfile.ZipInfo], folder: Path) -> None:
    """Room to unpack: each member's size is checked against the manifest and zipfile stops
    reading there, so their sum is what unpacking writes."""
    total, free = sum(i.file_size for i in members), shutil.disk_usage(folder).free
    if total > free:
        raise refused(archive, f"it unpacks to {total} bytes and {folder} has {free} free; point TMPDIR at a "
                               "larger disk")


def _extract(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, files: dict, folder: Path) -> None:
    """Unpack one (safe, listed) member into ``folder``, refusing it when its bytes are not those
    the manifest lists."""
    target = folder.joinpath(*info.filename.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise refused(archive, f"{info.filename!r} cannot be read back ({exc}): the archive was damaged or "
                               "altered") from None
    if digest.hexdigest() != files[info.filename]["sha256"]:
        raise refused(archive, f"{info.filename!r} differs from what was exported (its SHA-256 is not the one its "
                               "manifest lists): the archive was damaged or altered")


def unpack_checked(archive: Path, folder: Path) -> tuple[dict, str]:
    """Check the whole archive and unpack it into ``folder`` (a temporary one): the manifest and
    its SHA-256. A :class:`UserError` names the first thing wrong; nothing here runs or loads
    what the archive holds."""
    try:
        zf = zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise UserError(f"{archive}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{archive}: is a folder; give the archive `dlbench export` wrote (a .zip file)") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise refused(archive, f"it is not a zip archive, or it is truncated or damaged ({exc}); a dlbench study "
                               "archive is the .zip file `dlbench export` writes") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            if why := unsafe_member(info):
                raise refused(archive, f"its member {info.filename!r} {why}, which no archive `dlbench export` "
                                       "writes holds: the archive was altered")
        manifest, text = read_manifest(archive, zf)
        members = check_listing(archive, infos, manifest["files"])
        _check_room(archive, members, folder)
        for info in sorted(members, key=lambda i: i.filename):
            _extract(archive, zf, info, manifest["files"], folder)
    return manifest, hashlib.sha256(text).hexdigest()


def _record_problem(record, run_id: str) -> str | None:
    """What run.json lacks to be made into a run again (None: nothing)."""
    if not isinstance(record, dict) or record.get("run_id") != run_id:
        return f"it is not the record of run {run_id}"
    for name in ("tags", "params", "metrics"):
        if not isinstance(record.get(name), dict):
            return f"it has no {name!r} object"
    if not all(isinstance(k, str) and isinstance(v, str) for part in ("tags", "params")
               for k, v in record[part].items()):
        return "its tags and params are not all text"
    if not all(isinstance(h, list) and all(isinstance(row, list) and len(row) == 3 for row in h)
               for h in record["metrics"].values()):
        return "its metrics are not lists of [step, timestamp, value]"
    if not isinstance(record.get("status"), str) or not isinstance(record.get("start_time"), (int, type(None))):
        return "it has no status or start time"
    if not all(isinstance(row[0], int) and isinstance(row[1], int) and isinstance(row[2], (int, float))
               for h in record["metrics"].values() for row in h):
        return "its metrics' steps and timestamps are not whole numbers, or their values not numbers"
    inputs = record.get("inputs", [])
    if not isinstance(inputs, list) or not all(_dataset_input(d) for d in inputs):
        return "its inputs are not dataset inputs as MLflow logs them"
    return None


def _dataset_input(entry) -> bool:
    """Whether an entry of run.json's inputs is a dataset (MLflow's fields, text) with text tags."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dataset"), dict) or not isinstance(entry.get("tags"), dict):
        return False
    dataset, tags = entry["dataset"], entry["tags"]
    return (set(dataset) <= DATASET_FIELDS and {"name", "digest", "source_type", "source"} <= set(dataset)
            and all(isinstance(v, (str, type(None))) for v in dataset.values())
            and all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()))


def read_runs(archive: Path, manifest: dict, folder: Path) -> dict[str, dict]:
    """run id -> its run.json, for every run the manifest lists, parents first; every runs/
    folder of the archive is one of them."""
    listed = set(manifest["runs"])
    stray = sorted({name.split("/")[1] for name in manifest["files"] if name.startswith("runs/")} - listed)
    if stray:
        raise refused(archive, f"it holds runs/{stray[0]}/, a run its manifest's \"runs\" does not list: the "
                               "archive was altered")
    records = {}
    for run_id in manifest["runs"]:
        path = folder / "runs" / run_id / "run.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise refused(archive, f"runs/{run_id}/run.json cannot be read ({exc})") from None
        if problem := _record_problem(record, run_id):
            raise refused(archive, f"runs/{run_id}/run.json is not a run as `dlbench export` writes one: {problem}")
        records[run_id] = record
    if records[manifest["study_run_id"]]["tags"].get("dlbench.role") != "study":
        raise refused(archive, f"its study run {manifest['study_run_id']} has no tag dlbench.role = study")
    return {run_id: records[run_id] for run_id in parents_first(archive, records)}


def parents_first(archive: Path, records: dict[str, dict]) -> list[str]:
    """The runs in manifest order, each after its parent when the parent is in the archive."""
    placed: list[str] = []
    done: set[str] = set()

    def place(run_id: str, trail: frozenset) -> None:
        if run_id in done:
            return
        if run_id in trail:
            raise refused(archive, f"run {run_id} is among its own parents: the archive was altered")
        parent = records[run_id]["tags"].get("mlflow.parentRunId")
        if parent in records:
            place(parent, trail | {run_id})
        done.add(run_id)
        placed.append(run_id)

    for run_id in records:
        place(run_id, frozenset())
    return placed


# -- import -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    """What ``dlbench import`` did: the study run in the target store (and its original id), the
    experiment, how many runs it made (``replaced`` of them in place of a half-finished import's)
    and found already there, the manifest's SHA-256 and the target store."""

    study_run_id: str
    original_study_run_id: str
    experiment: str
    imported: int
    present: int
    replaced: int
    sha256: str
    tracking_uri: str


def import_archive(options: ImportOptions) -> Imported:
    """Check the archive ``options.archive`` whole, then make its runs in the target store;
    see :class:`Importer` for what is made and what is skipped."""
    archive = Path(options.archive)
    # no "View run at <url>" line per run from a tracking server's client (a user's own setting wins)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    with tempfile.TemporaryDirectory(prefix="dlbench-import-") as tmp:
        folder = Path(tmp)
        manifest, sha = unpack_checked(archive, folder)
        records = read_runs(archive, manifest, folder)
        uri = options.tracking_uri
        require_reachable(uri)
        require_in_place(uri, "dlbench import")  # artifacts would go to the folder it was copied from
        experiment = options.experiment or manifest["experiment"]
        with store_lock(uri):  # two imports at once into one local store would both make the runs
            importer = Importer(_open_target(uri, experiment), sha, folder)
            importer.run(records)
    study = manifest["study_run_id"]
    return Imported(importer.ids[study], study, experiment, importer.made, importer.present, importer.replaced, sha,
                    uri)


def _open_target(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """The target store's client and the experiment, made when missing (artifacts beside a
    SQLite file, as ``dlbench run`` makes it)."""
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return client, client.create_experiment(experiment, artifact_location=artifact_location(uri, experiment),
                                                    tags=dict([EXPERIMENT_KIND]))
    except Exception as exc:  # a bad URI, a file that is no MLflow database, a read-only folder
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot open the MLflow tracking store {uri!r}: {first}. Check --tracking-uri "
                        "(sqlite:///mlflow.db, or http://HOST:PORT of an `mlflow server`).") from exc
    if exp.lifecycle_stage != "active":
        raise UserError(f"experiment {experiment!r} of {uri} is deleted: restore it (`mlflow experiments restore "
                        f"--experiment-id {exp.experiment_id}`) or import into another with --experiment NAME")
    if EXPERIMENT_KIND[0] not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return client, exp.experiment_id


def _chunks(items: list, size: int):
    """``items`` in lists of at most ``size`` (MLflow's per-call limits)."""
    return (items[i:i + size] for i in range(0, len(items), size))


BATCH_BYTES = MAX_BATCH_LOG_REQUEST_SIZE // 2  # of keys and values: a request's JSON adds names and quotes


def batches(params: list[Param], tags: list[RunTag], metrics: list[Metric]):
    """The keyword arguments of as few ``log_batch`` calls as MLflow's limits allow (100 params,
    100 tags, 1000 metrics and 1000 of them in all per call, a request under 1 MB): a SQLite
    store commits each call, and a server answers each one."""
    kinds = {"params": deque(params), "tags": deque(tags), "metrics": deque(metrics)}
    most = {"params": MAX_PARAMS_TAGS_PER_BATCH, "tags": MAX_PARAMS_TAGS_PER_BATCH, "metrics": MAX_METRICS_PER_BATCH}
    while any(kinds.values()):
        batch: dict[str, list] = {kind: [] for kind in kinds}
        room, size = MAX_ENTITIES_PER_BATCH, 0
        for kind, items in kinds.items():
            while items and room and len(batch[kind]) < most[kind]:
                item = items[0]
                weight = len(item.key) + len(str(item.value)) + 64  # 64: a metric's step and timestamp, the JSON
                if size + weight > BATCH_BYTES and size:
                    room = 0
                    break
                batch[kind].append(items.popleft())
                room, size = room - 1, size + weight
        yield {kind: items for kind, items in batch.items() if items}


@dataclass
class Importer:
    """Makes an archive's runs in one experiment of a store, parents first.

    A run already there is skipped: one imported before (tag ``dlbench.imported_from`` = its
    original id, ``dlbench.import_complete`` = true) or the original itself (importing into the
    store it came from). One whose import was cut short (no ``import_complete``) is deleted and
    made again. The others are made in two passes: every run first, with its parent's new id, so
    that every id is known; then each one's params, tags and metrics (values that are the id of
    an archived run rewritten to its new id), dataset inputs and artifacts, its status and end
    time, and ``import_complete`` last. A run kept from an earlier import has its tags that name
    a run made again pointed at the new one."""

    target: tuple[MlflowClient, str]  # the client and the experiment id
    sha: str
    folder: Path
    ids: dict[str, str] = field(default_factory=dict)  # original run id -> the run id in the target store
    made: int = 0
    present: int = 0
    replaced: int = 0

    @property
    def client(self) -> MlflowClient:
        return self.target[0]

    def run(self, records: dict[str, dict]) -> None:
        found = self._found(list(records))
        to_make = []
        for run_id in records:
            runs = found.get(run_id, [])
            complete = [r for r in runs if r.data.tags.get(IMPORT_COMPLETE) == "true" or r.info.run_id == run_id]
            if complete:
                self.ids[run_id] = complete[0].info.run_id
                self.present += 1
                continue
            for half in runs:  # a cut-short import of this run: made again
                self.client.delete_run(half.info.run_id)
            self.replaced += bool(runs)
            self.ids[run_id] = self._create(records[run_id])
            to_make.append(run_id)
            self.made += 1
        for run_id in to_make:
            self._fill(records[run_id], self.ids[run_id])
        self._relink(records, [r for r in records if r not in to_make], found)
        self._write_views(records, to_make)

    def _found(self, run_ids: list[str]) -> dict[str, list]:
        """Original run id -> the active runs of the target experiment that are it: imported
        copies (complete or not), or the original itself."""
        experiment_id = self.target[1]
        found: dict[str, list] = {}
        for run in search_all(self.client, experiment_id, {}, f"tags.`{IMPORTED_FROM}` LIKE '%'"):
            found.setdefault(run.data.tags[IMPORTED_FROM], []).append(run)
        for chunk in _chunks(run_ids, 100):
            quoted = ", ".join(f"'{r}'" for r in chunk)  # run ids: letters, digits, _ and - (checked)
            for run in search_all(self.client, experiment_id, {}, f"attributes.run_id IN ({quoted})"):
                found.setdefault(run.info.run_id, []).append(run)
        return found

    def _rewritten(self, values: dict[str, str]) -> dict[str, str]:
        """``values`` with each value that is an archived run's id replaced by that run's id here."""
        return {k: self.ids.get(v, v) for k, v in values.items()}

    def _create(self, record: dict) -> str:
        """The run, made with its start time, name, author, parent and import tags (the rest in
        :meth:`_fill`)."""
        tags = record["tags"]
        first = {k: tags[k] for k in ("mlflow.user", "mlflow.parentRunId") if k in tags}
        first = self._rewritten(first) | {IMPORTED_FROM: record["run_id"], IMPORTED_ARCHIVE: self.sha}
        run = self.client.create_run(self.target[1], start_time=record["start_time"], tags=first,
                                     run_name=record.get("run_name"))
        return run.info.run_id

    def _fill(self, record: dict, run_id: str) -> None:
        """Everything of the run but its start, then its end, then ``import_complete``."""
        client = self.client
        params = [Param(k, v) for k, v in self._rewritten(record["params"]).items()]
        # an archive of imported runs: this import's tags replace the earlier one's; and no tag of a
        # process at work on the original's machine
        tags = {k: v for k, v in self._rewritten(record["tags"]).items()
                if k != "mlflow.runName" and k not in IMPORT_TAGS and not k.startswith(PROCESS_TAG)}
        status = record["status"] if record["status"] in ENDED else "KILLED"  # nothing will ever end it
        if status != record["status"]:
            tags[IMPORTED_STATUS] = record["status"]
        metrics = [Metric(key, value, timestamp, step) for key, rows in record["metrics"].items()
                   for step, timestamp, value in rows]
        for batch in batches(params, [RunTag(k, v) for k, v in tags.items()], metrics):
            client.log_batch(run_id, **batch)
        datasets = [DatasetInput(Dataset(**d["dataset"]), [InputTag(k, v) for k, v in d["tags"].items()])
                    for d in record.get("inputs", [])]
        for chunk in _chunks(datasets, MAX_DATASETS_PER_BATCH):
            client.log_inputs(run_id, datasets=chunk)
        artifacts = self.folder / "runs" / record["run_id"] / "artifacts"
        if any(p.is_file() for p in artifacts.rglob("*")):
            client.log_artifacts(run_id, str(artifacts))
        client.set_terminated(run_id, status, end_time=record.get("end_time") or int(time.time() * 1000))
        client.set_tag(run_id, IMPORT_COMPLETE, "true")

    def _relink(self, records: dict[str, dict], kept: list[str], found: dict[str, list]) -> None:
        """Point the tags of runs kept from an earlier import that name an archived run at its
        run here (one made again now has a new id)."""
        for run_id in kept:
            target = self.ids[run_id]
            now = next((r.data.tags for r in found.get(run_id, []) if r.info.run_id == target), {})
            for key, value in record_refs(records[run_id], self.ids).items():
                if now.get(key) != value:
                    self.client.set_tag(target, key, value)

    def _write_views(self, records: dict[str, dict], made: list[str]) -> None:
        """A saved view of each study of an imported study run, as ``dlbench run`` makes, where
        the experiment has none of that study yet (the user's own study runs keep theirs)."""
        experiment_id = self.target[1]
        existing = self.client.get_experiment(experiment_id).tags
        for run_id in made:
            if records[run_id]["tags"].get("dlbench.role") != "study":
                continue
            studies: dict[str, list[str]] = {}
            for record in records.values():
                tags = record["tags"]
                if tags.get("mlflow.parentRunId") == run_id and tags.get("dlbench.role") == "trial":
                    studies.setdefault(tags.get("dlbench.study", ""), list(_levels(tags)))
            fresh = {s: f for s, f in studies.items() if views.VIEW_TAG + views.view_id(s) not in existing}
            if fresh:
                views.write_views(self.client, experiment_id, self.ids[run_id], fresh)


def _levels(tags: dict[str, str]) -> dict:
    """A trial's factors and levels (its ``dlbench.levels`` tag), {} when it has none readable."""
    try:
        levels = json.loads(tags.get("dlbench.levels", "{}"))
    except ValueError:
        return {}
    return levels if isinstance(levels, dict) else {}


def record_refs(record: dict, ids: dict[str, str]) -> dict[str, str]:
    """The tags of a run that name an archived run, with that run's id in the target store."""
    return {k: ids[v] for k, v in record["tags"].items() if v in ids and k not in IMPORT_TAGS}
