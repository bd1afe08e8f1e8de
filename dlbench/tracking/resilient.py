"""A tracking server that goes away: MLflow writes that wait for it instead of failing the study.

Against an ``http://`` server, an MlflowClient call fails when the server is unreachable (killed,
restarting, the network down), after urllib3 has retried it for minutes. :class:`ResilientClient`
wraps the client so that such an outage costs nothing:

* writes (metrics, tags, params, artifacts, run status) go through one ordered queue, sent at
  once while the server answers; while it does not, they stay queued in memory (bounded:
  ``MAX_PENDING_VALUES``) and training goes on, a new attempt every ``retry_s`` seconds and a
  message now and then;
* what needs the server's answer (reads, creating a run: its id, and other dlbench processes
  must see the trial taken) or must be stored before dlbench goes on
  (:meth:`ResilientClient.sync`: before a checkpoint is written, a report drawn, the study
  left) waits for it, retrying: a trial trains on while the server is away, the next one waits;
* after ``timeout_s`` of outage (or at once after Ctrl-C: :meth:`ResilientClient.stop_waiting`),
  :class:`TrackingUnavailable`: dlbench stops with a clear message, the trials' checkpoints
  kept, and the next ``dlbench run`` resumes the study.

Nothing is written twice. Re-sending a write that may have reached the server before the
connection dropped is harmless: the same ``Metric`` objects (same key, step, timestamp and value)
are one row in a database-backed store (the ``metrics`` table's primary key is key, timestamp,
step, run, value, is_nan, and MLflow's SQL store skips rows already there), tags and params are
set to the same values, artifacts overwrite the same files, dataset inputs are not linked twice.
Creating a run is not idempotent: each creation carries a ``dlbench.create_id`` tag, and a retry
first looks the run up by it. dlbench turns urllib3's own retries off
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, unless set) so that an outage is noticed in a second and
urllib3 never re-sends a creation behind our back; the store's runs stay in the order written.

Not thread-safe: the tracker uses it from one thread.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial

import requests

from dlbench.errors import EXIT_TRY_AGAIN, UserError
from dlbench.tracking.keys import tags_filter

DEFAULT_TIMEOUT_S = 600.0  # --tracking-timeout: how long an outage may last before dlbench stops
RETRY_S = 2.0  # a new attempt this often while the server is away (a refused connection costs nothing)
NOTICE_S = 30.0  # the "unreachable" message this often
MAX_PENDING_VALUES = 200_000  # metric values, tags and params held while the server is away (~60 MB)
CREATE_ID_TAG = "dlbench.create_id"

# Writes are queued and sent in order; any other method is a read (it needs the answer).
WRITES = frozenset({"log_batch", "log_metric", "log_param", "set_tag", "delete_tag", "set_terminated",
                    "update_run", "log_text", "log_dict", "log_artifact", "log_artifacts", "log_inputs"})
TRANSIENT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
             requests.exceptions.RetryError, requests.exceptions.ChunkedEncodingError)


class TrackingUnavailable(UserError):
    """The tracking server stayed unreachable longer than the timeout (or past Ctrl-C): dlbench stopped."""

    exit_code = EXIT_TRY_AGAIN


def http_client_settings() -> None:
    """MLflow's HTTP client as dlbench needs it (a user's own settings win): a dead server fails
    a request at once (dlbench retries it, see the module docstring), a hung one after 30 s
    instead of 120 s, and no "View run at" lines in the middle of the progress output."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def outage_reason(exc: BaseException) -> str | None:
    """A short reason when ``exc`` means the server could not be reached (worth retrying), else
    None. MlflowClient raises MlflowException from the requests error: look down the chain."""
    seen = exc
    while seen is not None:
        if isinstance(seen, TRANSIENT):
            text = str(seen)
            if "refused" in text:
                return "connection refused"
            if "reset" in text or "aborted" in text:
                return "connection reset"
            if isinstance(seen, requests.exceptions.Timeout):
                return "no answer in time"
            if isinstance(seen, requests.exceptions.RetryError):
                return "server error"
            return type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM wait until the store call in hand returns (microseconds to a few
    milliseconds against a local store). A SQLite write cut in the middle by KeyboardInterrupt
    keeps the database locked, and the cleanup that follows (closing the runs as KILLED) would
    fail with "database is locked".

    The Python-level handlers are swapped for ones that only note the signal, and the signal is
    raised again once the call returns. (Blocking it with ``pthread_sigmask`` is not enough: the
    kernel then hands a process-wide signal to another thread, mlflow's or a worker pipe's,
    and Python still runs the handler in the main thread, in the middle of the write.)
    Handlers belong to the main thread, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: came.append(signum)) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for sig in dict.fromkeys(came):
            signal.raise_signal(sig)  # handled now, by the handler that was there before


_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@dataclass
class _Write:
    method: str  # an MlflowClient method
    args: tuple
    kwargs: dict
    values: int = 1  # what it holds in memory, for the bound


class ResilientClient:
    """An MlflowClient whose writes outlive an outage of the tracking server (see the module
    docstring). Every MlflowClient method is available; ``sync`` and ``stop_waiting`` are its own."""

    def __init__(self, client, uri: str, timeout_s: float | None = None, retry_s: float = RETRY_S, stream=None):
        http_client_settings()
        self.client, self.uri = client, uri
        self.timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        self.retry_s = retry_s
        self.stream = stream or sys.stderr
        self._pending: deque[_Write] = deque()
        self._pending_values = 0
        self._reached = False  # the server answered once: a failure since is an outage, not a wrong URI
        self._down_since: float | None = None
        self._reason = ""
        self._last_try = self._last_notice = 0.0
        self._waiting = True
        self._stopped: str | None = None  # why dlbench gave up on the server
        # a local store's calls are not cut by Ctrl-C (see signals_deferred); a server's may hang
        # for its request timeout, and the server's database is not this process's to lock
        self._atomic = nullcontext if uri.startswith(("http://", "https://", "databricks")) else signals_deferred

    def __getattr__(self, name: str):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr
        return partial(self._write if name in WRITES else self._read, name)

    # -- what the tracker calls ----------------------------------------------------------------

    def create_run(self, experiment_id: str, run_name: str | None = None, tags: dict | None = None):
        """Create a run now, exactly once, waiting for the server if it is away: each attempt
        carries the same ``dlbench.create_id`` tag, and a retry first looks for a run that an
        earlier attempt created before its answer was lost."""
        self.sync()
        create_id = uuid.uuid4().hex
        tags = {**(tags or {}), CREATE_ID_TAG: create_id}
        tried = False

        def create():
            nonlocal tried
            if tried:
                found = self.client.search_runs([experiment_id], tags_filter({CREATE_ID_TAG: create_id}))
                if found:
                    return found[0]
            tried = True
            return self.client.create_run(experiment_id, run_name=run_name, tags=tags)

        return self._retrying(create)

    def sync(self) -> None:
        """Send every queued write, waiting for the server as long as the timeout allows."""
        self._check()
        while not self._drain():
            self._still_down()
            time.sleep(self._next_try_in())

    def stop_waiting(self) -> None:
        """From now on an absent server is not waited for (Ctrl-C: dlbench is stopping): what
        cannot be sent at once raises :class:`TrackingUnavailable`."""
        self._waiting = False

    # -- the queue -----------------------------------------------------------------------------

    def _write(self, method: str, *args, **kwargs) -> None:
        values = sum(len(kwargs.get(k) or ()) for k in ("metrics", "params", "tags")) if method == "log_batch" else 1
        self._queue(_Write(method, args, kwargs, values=values))

    def _queue(self, write: _Write) -> None:
        self._check()
        self._pending.append(write)
        self._pending_values += write.values
        if self._down_since is None or self._next_try_in() == 0:
            if self._drain():
                return
        if self._pending_values > MAX_PENDING_VALUES:
            self.sync()  # memory is bounded: wait for the server
        else:
            self._still_down()

    def _drain(self) -> bool:
        """Send the queued writes in order; False when the server is away (the rest stay queued)."""
        while self._pending:
            write = self._pending[0]
            try:
                self._send(write)
            except Exception as exc:
                if not self._outage(exc):
                    self._pop()  # refused by the server (not an outage): the caller sees why
                    raise
                return False
            self._pop()
            self._back()
        return True

    def _pop(self) -> None:
        self._pending_values -= self._pending.popleft().values

    def _send(self, write: _Write) -> None:
        with self._atomic():
            getattr(self.client, write.method)(*write.args, **write.kwargs)

    # -- reads ---------------------------------------------------------------------------------

    def _read(self, method: str, *args, **kwargs):
        self.sync()  # a read sees every write made before it
        return self._retrying(partial(getattr(self.client, method), *args, **kwargs))

    def _retrying(self, call):
        while True:
            self._check()
            try:
                with self._atomic():
                    result = call()
            except Exception as exc:
                if not self._outage(exc):
                    raise
                self._still_down()
                time.sleep(self._next_try_in())
                continue
            self._back()
            return result

    # -- the outage ----------------------------------------------------------------------------

    def _outage(self, exc: Exception) -> bool:
        """Record a failed attempt; False when it is not an outage (a refusal by the server, or a
        server never reached: a wrong URI is said at once, not waited for)."""
        reason = outage_reason(exc)
        if reason is None or not self._reached:
            return False
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._reason, self._last_try = reason, now
        return True

    def _back(self) -> None:
        self._reached = True
        if self._down_since is not None:
            down = time.monotonic() - self._down_since
            self.stream.write(f"tracking server {self.uri} reachable again after {down:.0f} s: "
                              "what was held meanwhile is in the store\n")
            self.stream.flush()
            self._down_since, self._last_notice = None, 0.0

    def _next_try_in(self) -> float:
        """Seconds until the next attempt: ``retry_s`` after the last, never past the timeout."""
        now = time.monotonic()
        next_try = min(self._last_try + self.retry_s, self._down_since + self.timeout_s + 0.01)
        return max(0.0, next_try - now)

    def _still_down(self) -> None:
        """Past the timeout: stop. Else say what happens, now and then."""
        now = time.monotonic()
        down = now - self._down_since
        if down > self.timeout_s or not self._waiting:
            self._stopped = (f"unreachable ({self._reason}) for more than --tracking-timeout {self.timeout_s:g} s"
                             if self._waiting else f"unreachable ({self._reason}) when dlbench was stopping")
            self._check()
        if now - self._last_notice >= NOTICE_S:
            self._last_notice = now
            self.stream.write(
                f"tracking server {self.uri} unreachable since {down:.0f} s ({self._reason}); retrying every "
                f"{self.retry_s:g} s. Training goes on meanwhile, its metrics held in memory, up to the next "
                "checkpoint, new trial or end of the study, which wait for the server. dlbench stops after "
                f"--tracking-timeout {self.timeout_s:g} s of this; Ctrl-C stops it now; either way the same "
                "`dlbench run` command resumes the study from its checkpoints.\n")
            self.stream.flush()

    def _check(self) -> None:
        if self._stopped:
            raise TrackingUnavailable(
                f"tracking server {self.uri} {self._stopped}: dlbench stopped. Nothing is lost: the trials' "
                "epoch checkpoints are kept (--checkpoint-dir) and what could not be written is redone from them. "
                "Once the server answers again, run the same `dlbench run` command: finished trials are skipped, "
                "the others resume from their last checkpoint, nothing is logged twice."
                + (" A longer --tracking-timeout waits longer." if self._waiting else ""))
