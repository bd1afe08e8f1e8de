"""Where dlbench writes: a safe file name for every user-given name, and checks, before a run
starts, that every place it writes to can be written and that no report folder of another study
file is overwritten (each report folder holds a marker, ``.dlbench-report.json``, naming the
study file, experiment and study that wrote it).

A study may be named anything (``../x``, ``a/b``, ``Über "quoted" 'study'``, 200 characters):
what becomes a file or folder name goes through :func:`folder_name`, so no name ever writes
outside the folder it belongs in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path

from dlbench.errors import UserError

REPORT_MARKER = ".dlbench-report.json"  # in each report folder: which study file's study wrote it
PLUGINS_RECORD = "plugins.json"  # a study run's artifact: the local plugin files it loaded, each file's sha256
PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$")  # used as it is
SLUG_CHARS = 60  # of the name, before the hash suffix


def folder_name(name: str) -> str:
    """A file or folder name for ``name``: the name itself when it is plain (letters, digits and
    ``_ . + -``, at most 100 characters, starting with a letter or digit), else an ASCII slug of
    it and 8 hex digits of its SHA-256 (``../x`` -> ``x-d6b96a97``): never a path, ``.`` or
    ``..``, at most 69 bytes, and two names give two folders."""
    if PLAIN.match(name):
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "-", ascii_name).strip("-.")[:SLUG_CHARS].strip("-.")
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def cannot_write(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (created when missing), or None when they can."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only" + ("" if existing == folder else f", so {folder} cannot be created")
    return None


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (relative, or absolute with four
    slashes), None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = tracking_uri.removeprefix("sqlite:///").split("?")[0]
    return Path(db) if db and db != ":memory:" else None


def check_run_outputs(tracking_uri: str, reports_dir: Path, checkpoint_dir: Path | None) -> None:
    """Refuse to start a run that could not write its results, naming the option that puts each
    elsewhere: the MLflow store and its artifacts (a SQLite file; artifacts go beside it), the
    reports and the checkpoints."""
    problems = []
    db = sqlite_file(tracking_uri)
    if db is not None:
        why = cannot_write(db.absolute().parent)
        if why is None and db.exists() and not os.access(db, os.W_OK):
            why = f"{db.absolute()} is read-only"
        if why is not None:
            problems.append(f"the MLflow store {db} and its artifacts cannot be written ({why}); put them elsewhere "
                            "with --tracking-uri sqlite:////abs/path/mlflow.db")
    places = [(reports_dir, "the reports", "--reports-dir DIR"),
              (checkpoint_dir, "the checkpoints of running trials", "--checkpoint-dir DIR")]
    for folder, what, option in places:
        why = cannot_write(folder) if folder is not None else None
        if why is not None:
            problems.append(f"{what} cannot be written ({why}); put them elsewhere with {option}")
    if problems:
        raise UserError("nothing was run: " + "; ".join(problems) + ". A read-only checkout runs with every output "
                        "pointed elsewhere (a missing data/ is then generated in memory).")


def write_report_marker(folder: Path, study_file: str | Path | None, experiment: str, study: str) -> None:
    """Record in ``folder`` which study (of which study file, the absolute path, and experiment)
    its report is: :func:`check_report_folders` refuses to let another study file overwrite it."""
    marker = {"study_file": str(study_file) if study_file else None, "experiment": experiment, "study": study}
    (Path(folder) / REPORT_MARKER).write_text(json.dumps(marker, ensure_ascii=False, indent=1) + "\n",
                                              encoding="utf-8")


def read_report_marker(folder: Path) -> dict | None:
    """The marker of a report folder, or None: no folder, no marker (a report of an older
    dlbench), or one that does not read as a marker."""
    try:
        marker = json.loads((Path(folder) / REPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def same_study_file(recorded: str | Path, ours: str | Path) -> bool:
    """Whether two paths name the same study file (after resolving links and ``..``)."""
    a, b = Path(recorded), Path(ours)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def ends_with(path: str | Path, tail: str | Path) -> bool:
    """Whether ``path`` ends with the parts of the relative path ``tail`` (its leading ``..`` and
    ``.`` dropped): how a study file recorded relative to another working directory is matched."""
    parts = [p for p in Path(os.path.normpath(tail)).parts if p not in ("..", ".")]
    return bool(parts) and list(Path(path).parts[-len(parts):]) == parts


def check_report_folders(reports_dir: Path, study_file: str | Path, studies, experiment: str,
                         doing: str | None = None, tail: str | None = None, nothing: str = "nothing was run") -> None:
    """Refuse (UserError) to write the report of any of ``studies`` (of ``study_file``, an
    absolute or working-directory-relative path, in MLflow experiment ``experiment``) into
    ``reports_dir/<folder>`` when that folder holds the report of a study of another study file:
    two files with a study of the same name would otherwise overwrite each other's reports
    silently. A folder without a marker (a report of an older dlbench) and a marker of the same
    file are fine. ``doing`` says what would overwrite (default: this run of the file), ``nothing``
    what was therefore not done; ``tail``, a study file recorded relative to an unknown working
    directory, matches any marker of the same experiment whose path ends with it."""
    reports_dir = Path(reports_dir)
    clashes = []
    for study in dict.fromkeys(studies):
        folder = reports_dir / folder_name(study)
        marker = read_report_marker(folder)
        theirs = marker.get("study_file") if marker else None
        if not theirs or same_study_file(theirs, study_file):
            continue
        if tail is not None and marker.get("experiment") == experiment and ends_with(theirs, tail):
            continue
        why = (f"{folder}/ holds the report of study {marker.get('study', study)!r} of {theirs} "
               f"(experiment {marker.get('experiment', '?')!r})")
        clashes.append((f"{folder}/", why))
    if not clashes:
        return
    it = "it" if len(clashes) == 1 else "them"
    folders = " and ".join(folder for folder, _ in clashes)
    doing = doing or f"this run of {study_file}"
    raise UserError(f"{nothing}: {'; '.join(why for _, why in clashes)}; {doing} would overwrite {it}. Keep both "
                    f"with --reports-dir {reports_dir / folder_name(experiment)} (or another folder), or delete "
                    f"{folders} to replace {it}.")


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store's file, in
    ``mlruns/<folder_name(experiment)>`` (MLflow's own default, ``./mlruns`` in the working
    directory, may be a read-only checkout); None for any other store (a server decides)."""
    db = sqlite_file(tracking_uri)
    return None if db is None else str(db.absolute().parent / "mlruns" / folder_name(experiment))
