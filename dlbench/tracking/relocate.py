"""A SQLite store moved or copied as a folder: its artifact locations pointed back beside it.

MLflow keeps absolute artifact locations in the database (``experiments.artifact_location``,
``runs.artifact_uri``, ``logged_models.artifact_location``, a trace's ``mlflow.artifactLocation``
tag). dlbench puts an experiment's artifacts beside the SQLite file, in
``<folder>/mlruns/<experiment>/`` (:func:`dlbench.paths.artifact_location`), so a store is one
folder: ``mlflow.db`` and ``mlruns/``. Copied or moved elsewhere, its locations still name the old
folder, which is gone (a move) or is another store's (a copy): the UI shows no artifacts, and a
report would read, or attach to, the original's.

:func:`relocate` rewrites every local location under ``<old folder>/mlruns/`` to the same place
under ``<this folder>/mlruns/`` when the old folder is gone or holds another database file of the
same name, and when what it held is found beside this database. Locations that are not local
paths (``s3://``, ``mlflow-artifacts:/``, ...) and local ones into a folder that still exists and
is no other store's are never touched. Run again, it finds nothing to do. Plain ``sqlite3``:
three UPDATEs, no MLflow import needed to read or write them.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from dlbench.errors import UserError
from dlbench.paths import sqlite_file
from dlbench.tracking.lock import store_lock
from dlbench.tracking.server import is_server

ARTIFACTS_FOLDER = "mlruns"  # beside the database: dlbench's (and MLflow's) artifact folder
# (what the UI and messages call it, table, column, an extra condition): every artifact location MLflow stores
LOCATIONS = (("experiments", "experiments", "artifact_location", ""),
             ("runs", "runs", "artifact_uri", ""),
             ("logged models", "logged_models", "artifact_location", ""),
             ("traces", "trace_tags", "value", "key = 'mlflow.artifactLocation'"))
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Move:
    """The locations under ``old_root/mlruns`` that belong under ``new_root/mlruns``: how many of
    each kind (``counts``: experiments, runs, ...), whether the old folder is gone or is another
    store's (``why``), and whether what they point to is found beside the database (``found``:
    relocating then makes them open; otherwise nothing is moved)."""

    old_root: Path
    new_root: Path
    counts: dict[str, int]
    why: str
    found: bool

    def describe(self) -> str:
        what = ", ".join(f"{n} {kind if n > 1 else kind[:-1]}" for kind, n in self.counts.items() if n)
        return f"{self.old_root / ARTIFACTS_FOLDER} -> {self.new_root / ARTIFACTS_FOLDER} ({what})"


def local_path(location: str) -> Path | None:
    """The absolute local path of an artifact location (a path or a ``file:`` URI), None for
    anything else (``s3://``, ``mlflow-artifacts:/``, ``dbfs:/``, a relative path)."""
    if location.startswith("file:"):
        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            return None
        path = Path(unquote(parsed.path))
    elif SCHEME.match(location):
        return None
    else:
        path = Path(location)
    return path if path.is_absolute() else None


def store_root(path: Path) -> Path | None:
    """The folder holding ``mlruns/`` that an experiment's location (``<root>/mlruns/<name>``) or
    a run's (``<root>/mlruns/<name>/<run id>/artifacts``) is in; None for another layout."""
    if path.parent.name == ARTIFACTS_FOLDER:
        return path.parent.parent
    if path.name == "artifacts" and len(path.parents) > 3 and path.parents[2].name == ARTIFACTS_FOLDER:
        return path.parents[3]
    return None


def database_of(tracking_uri: str) -> Path:
    """The SQLite file of ``tracking_uri``; a :class:`UserError` for any other store."""
    if is_server(tracking_uri):
        raise UserError(f"--tracking-uri {tracking_uri} is an MLflow tracking server: it keeps its artifacts where "
                        "it was told to (its --artifacts-destination), and clients never see paths into it. "
                        "`dlbench relocate` is for a SQLite store (a folder with mlflow.db and mlruns/) that was "
                        "copied or moved.")
    db = sqlite_file(tracking_uri)
    if db is None:
        raise UserError(f"--tracking-uri {tracking_uri}: `dlbench relocate` rewrites the artifact locations of a "
                        "SQLite store (sqlite:///path/to/mlflow.db, its artifacts in mlruns/ beside it); this "
                        "store is not one.")
    if not db.is_file():
        raise UserError(f"--tracking-uri {tracking_uri}: no such database file ({db.absolute()}). Give the "
                        "copied store's file, e.g. --tracking-uri sqlite:////path/to/copy/mlflow.db.")
    return db


def _same(a: Path, b: Path) -> bool:
    try:
        return a == b or os.path.samefile(a, b)
    except OSError:
        return False


def _read(conn: sqlite3.Connection) -> list[tuple[str, str, int, str]]:
    """(kind, table, rowid, location) of every artifact location in the database."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    rows = []
    for kind, table, column, where in LOCATIONS:
        if table in tables:
            query = f"SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL {'AND ' + where if where else ''}"
            rows += [(kind, table, rowid, value) for rowid, value in conn.execute(query)]
    return rows


def _plan(db: Path, rows) -> list[Move]:
    new_root = db.absolute().parent
    by_root: dict[Path, list[tuple[str, Path]]] = {}
    for kind, _table, _rowid, value in rows:
        path = local_path(value)
        root = store_root(path) if path is not None else None
        if root is not None and not _same(root, new_root):
            by_root.setdefault(root, []).append((kind, path))
    moves = []
    for root, located in sorted(by_root.items()):
        old_db = root / db.name
        if not (root / ARTIFACTS_FOLDER).is_dir():
            why = "gone"
        elif old_db.is_file() and not _same(old_db, db):
            why = f"another store's, {old_db} beside it"
        else:
            continue  # a folder that still holds them and is no other store's: artifacts kept elsewhere on purpose
        old, new = root / ARTIFACTS_FOLDER, new_root / ARTIFACTS_FOLDER
        found = any((new / path.relative_to(old)).exists() for _kind, path in located)
        counts = {kind: sum(k == kind for k, _ in located) for kind, *_ in LOCATIONS}
        if not found and (why != "gone" or counts["experiments"] == len(located)):
            # nothing of it here and nothing lost: e.g. MLflow's Default experiment, made in the
            # working directory of the first client (with a store of its own there), never used
            continue
        moves.append(Move(root, new_root, counts, why, found))
    return moves


def _connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, timeout=60)  # a running study may hold the write lock a moment


def moved(tracking_uri: str) -> list[Move]:
    """What :func:`relocate` would change in a SQLite store; [] for any other store (nothing to
    check) or a store in place. Only reads."""
    db = sqlite_file(tracking_uri)
    if db is None or not db.is_file():
        return []
    conn = _connect(db)
    try:
        return _plan(db, _read(conn))
    except sqlite3.DatabaseError:
        return []  # not an MLflow database: MLflow says so when it opens it
    finally:
        conn.close()


def _rewrites(rows, moves: list[Move]) -> dict[str, list[tuple[str, int]]]:
    """table -> [(new location, rowid)] for the locations under the old folders of ``moves``
    found beside the database (a ``file:`` URI stays one)."""
    olds = [(str(m.old_root / ARTIFACTS_FOLDER), m.new_root / ARTIFACTS_FOLDER) for m in moves if m.found]
    updates: dict[str, list[tuple[str, int]]] = {}
    for _kind, table, rowid, value in rows:
        path = local_path(value)
        for old, new in olds if path is not None else ():
            if str(path) == old or str(path).startswith(old + os.sep):
                target = new / path.relative_to(old)
                updates.setdefault(table, []).append((target.as_uri() if value.startswith("file:") else str(target),
                                                      rowid))
                break
    return updates


def relocate(tracking_uri: str, dry_run: bool = False) -> tuple[list[Move], int]:
    """Point every artifact location into a gone (or another store's) folder at the same place
    beside this SQLite store, where it is found there: (the moves, relocated or not found, and
    the number of locations rewritten, or to rewrite with ``dry_run``)."""
    db = database_of(tracking_uri)
    try:
        with store_lock(tracking_uri):  # no dlbench run creates an experiment or a run meanwhile
            conn = _connect(db)
            try:
                rows = _read(conn)
                moves = _plan(db, rows)
                updates = _rewrites(rows, moves)
                if not dry_run:
                    with conn:  # one transaction: all or nothing
                        for _kind, table, column, _where in LOCATIONS:
                            if updates.get(table):
                                conn.executemany(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", updates[table])
            finally:
                conn.close()
    except (sqlite3.DatabaseError, OSError) as exc:
        raise UserError(f"cannot rewrite the artifact locations of {db} ({exc}): is it an MLflow database, "
                        "writable (its folder too, for the lock file beside it), and not locked by another "
                        "program? Copy the store somewhere writable, or try again.") from None
    return moves, sum(len(v) for v in updates.values())


def not_in_place(tracking_uri: str, command: str) -> str | None:
    """Why ``command`` should not read this store as it is (its artifact locations point into a
    folder that is gone or is another store's), with what to do; None when nothing is amiss."""
    moves = moved(tracking_uri)
    if not moves:
        return None
    olds = " and ".join(f"{m.old_root / ARTIFACTS_FOLDER}/ ({m.why})" for m in moves)
    if all(m.found for m in moves):
        return (f"the store {tracking_uri} was copied or moved here from another folder: its artifact locations "
                f"still point into {olds}, so {command} would miss its artifacts or use the other store's. Run "
                f"`dlbench relocate --tracking-uri {tracking_uri}` once (it points them at "
                f"{moves[0].new_root / ARTIFACTS_FOLDER}/, beside the database), then {command} again.")
    return (f"the artifact locations of the store {tracking_uri} point into {olds}, and no "
            f"{ARTIFACTS_FOLDER}/ folder beside the database holds what they pointed to: copy the store's whole "
            f"folder (the database and its {ARTIFACTS_FOLDER}/ folder), then run `dlbench relocate --tracking-uri "
            f"URI` on the copy.")


def require_in_place(tracking_uri: str, command: str) -> None:
    """A :class:`UserError` (what to run) when the store was moved or copied and not relocated."""
    if why := not_in_place(tracking_uri, command):
        raise UserError(why)
