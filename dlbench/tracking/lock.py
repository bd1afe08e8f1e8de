"""One process at a time in the critical sections of a local tracking store.

Several ``dlbench run`` processes may share one store (four started at once on one study share
its work). What must not interleave between them: creating the store (MLflow's schema migration
is not safe against a concurrent one), creating the experiment, choosing or creating the study's
parent run and leaving it, claiming a trial (re-reading its runs, then opening its own) and
adding a dataset to the experiment (MLflow checks, then inserts). For a SQLite file
or a local directory these hold an exclusive ``flock`` on a lock file beside the store
(``mlflow.db.lock``, ``mlruns.lock``); the kernel releases it when the process dies, even by
kill -9. A tracking server or a database server has no file to lock: there the claims re-check
after creating their run instead (see ``runner.claim``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

try:
    import fcntl
except ImportError:  # not POSIX: no file lock (one dlbench run per store there)
    fcntl = None


class StoreLock:
    """An exclusive lock on one store, re-entrant within the process (``with lock:`` nests)."""

    def __init__(self, path: Path | None):
        self.path = path  # None: nothing to lock (a server store, or no flock here)
        self._fd: int | None = None
        self._depth = 0

    @property
    def exclusive(self) -> bool:
        """Whether holding it keeps every other dlbench process out of the critical sections."""
        return self.path is not None

    def __enter__(self) -> StoreLock:
        if self._depth == 0 and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def store_lock(tracking_uri: str) -> StoreLock:
    """The lock of the store ``tracking_uri`` names: ``<file>.lock`` beside a SQLite file,
    ``<dir>.lock`` beside a local directory store, none for a server."""
    return StoreLock(lock_path(tracking_uri) if fcntl is not None else None)


def lock_path(tracking_uri: str) -> Path | None:
    if tracking_uri.startswith("sqlite:"):
        db = tracking_uri.removeprefix("sqlite:///").split("?")[0]  # relative, or /absolute with sqlite:////
        if not tracking_uri.startswith("sqlite:///") or db in ("", ":memory:"):
            return None  # an in-memory store lives in one process
        return Path(db + ".lock")
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "file":
        return Path(parsed.path.rstrip("/") + ".lock")
    if not parsed.scheme:  # a plain path: a local directory store
        return Path(tracking_uri.rstrip("/") + ".lock")
    return None
