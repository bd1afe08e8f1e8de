"""Where dlbench writes: a safe file name for every user-given name, and a check, before a run
starts, that every place it writes to can be written.

A study may be named anything (``../x``, ``a/b``, ``Über "quoted" 'study'``, 200 characters):
what becomes a file or folder name goes through :func:`folder_name`, so no name ever writes
outside the folder it belongs in.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from dlbench.errors import UserError

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


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store's file, in
    ``mlruns/<folder_name(experiment)>`` (MLflow's own default, ``./mlruns`` in the working
    directory, may be a read-only checkout); None for any other store (a server decides)."""
    db = sqlite_file(tracking_uri)
    return None if db is None else str(db.absolute().parent / "mlruns" / folder_name(experiment))
