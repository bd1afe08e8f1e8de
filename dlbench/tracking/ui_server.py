"""``dlbench ui``: MLflow's own tracking server (the UI and the REST API) in this one process.

``mlflow ui`` (an alias of ``mlflow server``) starts itself, a uvicorn parent with 4 worker
processes that each import all of MLflow, and a job runner with 7 huey consumers for the GenAI
features (LLM judges, scorers, trace rollups): 16 processes, 3 GB of RSS together, 13-25 s on a
2-core machine (``benchmarks/ui_start.py``), and its "Uvicorn running on ..." line comes 11 s
before a worker answers. One person looking at a study needs one process: this serves the
same application (``mlflow.server.fastapi_app:app``, MLflow's Flask app inside its FastAPI app)
with uvicorn in the calling process, the environment set the way ``mlflow server`` sets it for
its workers (``mlflow.server._run_server``), job execution off (the GenAI jobs answer that it is
not enabled), and says where it is only once the page answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn  # imported before mlflow.server, which then knows it runs as a server (its security middleware)
from mlflow.exceptions import MlflowException
from mlflow.server import constants
from mlflow.tracking import MlflowClient

from dlbench.errors import UserError, choose_one_of
from dlbench.paths import sqlite_file
from dlbench.tracking import views
from dlbench.tracking.views import MODEL_TRAINING

HOST = "127.0.0.1"  # a local store's UI is for this machine (an SSH tunnel brings it elsewhere)
READY_POLL_S = 0.05


@dataclass(frozen=True)
class Opening:
    """Where the UI opens: an experiment's runs table (None: MLflow's home page) and why that one."""

    experiment_id: str | None
    name: str | None
    why: str
    studies: tuple[str, ...] = ()  # the studies with a saved view (dlbench.tracking.views) in it

    def url(self, base: str) -> str:
        if self.experiment_id is None:
            return f"{base}/"
        return f"{base}/#/experiments/{self.experiment_id}/runs?{MODEL_TRAINING}"

    def view_urls(self, base: str) -> dict[str, str]:
        """Each study's saved view: its runs grouped by level, the headline metrics first."""
        return {s: views.view_url(base, self.experiment_id, s) for s in self.studies}


def bind(port: int, host: str = HOST) -> socket.socket:
    """The listening socket (port 0: any free one); a :class:`UserError` when the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); another program "
                        "(an earlier `dlbench ui` or `mlflow ui`?) has it. Stop it, or give another port, e.g. "
                        f"--port {port + 1} (--port 0: any free one).") from None
    sock.listen(2048)
    return sock


def server_environment(tracking_uri: str) -> dict[str, str]:
    """What ``mlflow server`` hands its workers (``mlflow.server._run_server``) for a local store
    with its defaults (``--serve-artifacts``, artifacts of new experiments proxied to
    ``mlartifacts/``, put beside the database rather than in the working directory), and its
    GenAI job execution off."""
    db = sqlite_file(tracking_uri)
    destination = (db.absolute().parent if db is not None else Path.cwd()) / "mlartifacts"
    return {
        constants.BACKEND_STORE_URI_ENV_VAR: tracking_uri,
        constants.REGISTRY_STORE_URI_ENV_VAR: tracking_uri,
        constants.ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
        constants.SERVE_ARTIFACTS_ENV_VAR: "true",
        constants.ARTIFACTS_DESTINATION_ENV_VAR: str(destination),
        "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,  # mlflow server: one per start, shared by its workers
        "_MLFLOW_IN_JOB_EXECUTOR": "false",
        "_MLFLOW_SGI_NAME": "uvicorn",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner, no huey consumers
        "MLFLOW_ENABLE_WORKSPACES": os.environ.get("MLFLOW_ENABLE_WORKSPACES", "false"),
    }


def open_store(tracking_uri: str) -> None:
    """Open the store as ``mlflow server`` does before it starts (its schema checked, created
    when new); a :class:`UserError` saying why it cannot be."""
    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {db.absolute()} ({tracking_uri}): nothing to show yet. Run a study "
                        "first (`dlbench run STUDY.toml` writes ./mlflow.db), or point --tracking-uri at a store.")
    from mlflow.server.handlers import initialize_backend_stores  # the server's module: after the environment

    try:
        initialize_backend_stores(tracking_uri, tracking_uri, os.environ[constants.ARTIFACT_ROOT_ENV_VAR])
    except MlflowException as exc:
        raise UserError(f"cannot open the MLflow store {tracking_uri}: {exc.message.splitlines()[0]}") from None
    except Exception as exc:  # a file that is no database, a directory that is no store
        raise UserError(f"cannot open the MLflow store {tracking_uri}: {type(exc).__name__}: {exc}") from None


def choose_experiment(tracking_uri: str, name: str | None) -> Opening:
    """The experiment ``name`` (a :class:`UserError` when the store has none of that name), or the
    one whose run started last, or the newest one; none in an empty store."""
    client = MlflowClient(tracking_uri)
    experiments, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        experiments += page
        if not (token := page.token):
            break
    if name is not None:
        for exp in experiments:
            if exp.name == name:
                return Opening(exp.experiment_id, exp.name, "--experiment", _studies(exp))
        raise UserError(f"--experiment {name!r}: no such experiment in {tracking_uri}; "
                        f"{choose_one_of(name, [e.name for e in experiments])}")
    ids = [e.experiment_id for e in experiments]
    latest = client.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"]) if ids else []
    if latest:
        exp_id = latest[0].info.experiment_id
        exp = next(e for e in experiments if e.experiment_id == exp_id)
        return Opening(exp_id, exp.name, "the experiment of the latest run", _studies(exp))
    named = sorted((e for e in experiments if e.name != "Default"), key=lambda e: e.creation_time or 0)
    if named:
        return Opening(named[-1].experiment_id, named[-1].name, "the newest experiment; no runs yet", _studies(named[-1]))
    return Opening(None, None, "no experiment in this store yet")


def _studies(experiment) -> tuple[str, ...]:
    return tuple(views.studies_with_views(dict(experiment.tags)))


def answers(url: str, timeout_s: float = 5.0) -> bool:
    """Whether GET ``url`` returns 200 (straight to it: no proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Server(uvicorn.Server):
    """uvicorn's server with SIGINT and SIGTERM ending it gracefully, then returning (uvicorn
    raises the signal again once it has stopped, which would end this process with a traceback
    or status 143); a second Ctrl-C skips waiting for open connections."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(sock: socket.socket, announce: Callable[[str], None]) -> bool:
    """Serve MLflow's app on ``sock`` until SIGINT or SIGTERM; ``announce(base)`` (its address,
    ``http://127.0.0.1:<port>``; from another thread) once the page answers there. The environment (:func:`server_environment`) must be
    set and the store opened (:func:`open_store`) first. Whether it started at all."""
    with warnings.catch_warnings():  # starlette.middleware.wsgi's deprecation, MLflow's to deal with
        warnings.simplefilter("ignore")
        from mlflow.server.fastapi_app import app

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=3,
                            server_header=False)
    server = Server(config)
    host, port = sock.getsockname()[:2]
    base = f"http://{host}:{port}"

    def announce_when_answering() -> None:
        while not server.should_exit:
            if server.started and answers(f"{base}/health") and answers(f"{base}/"):
                announce(base)
                return
            time.sleep(READY_POLL_S)

    threading.Thread(target=announce_when_answering, name="dlbench-ui-ready", daemon=True).start()
    server.run(sockets=[sock])
    return server.started
