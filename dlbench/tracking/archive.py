"""The format of a study archive, the one zip file in which ``dlbench export`` writes a study run,
every run under it and what reproducing it needs, and from which ``dlbench import`` recreates
those runs in any store: writing the zip with its manifest, and reading and checking one.
Gathering what goes in is :mod:`dlbench.tracking.export`'s job; making the runs again,
:mod:`dlbench.tracking.archive_import`'s.

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
import re
import shutil
import stat
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import dlbench
from dlbench.errors import UserError

FORMAT = "dlbench-study-archive"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 2**20  # a manifest lists files: ~150 bytes each
RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")  # an MLflow run id is 32 hex digits; a run id names a folder
ENDED = ("FINISHED", "FAILED", "KILLED")  # MLflow's end states, kept; a RUNNING run is imported as KILLED
COMPRESSED = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".pdf", ".zip", ".gz", ".bz2", ".xz", ".zst", ".npz"}  # stored as is
DATASET_FIELDS = {"name", "digest", "source_type", "source", "schema", "profile"}  # mlflow.entities.Dataset's

IMPORTED_FROM = "dlbench.imported_from"  # the run's id in the store it was exported from
IMPORTED_ARCHIVE = "dlbench.imported_archive"  # the SHA-256 of the archive's manifest.json
IMPORT_COMPLETE = "dlbench.import_complete"  # "true", set last: a run without it is a half-finished import
IMPORTED_STATUS = "dlbench.imported_status"  # the original status when it was not an end state (RUNNING)
IMPORT_TAGS = (IMPORTED_FROM, IMPORTED_ARCHIVE, IMPORT_COMPLETE, IMPORTED_STATUS)  # of this import, not an earlier one


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
