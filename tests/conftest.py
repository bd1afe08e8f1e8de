"""Shared helpers and fixtures of the dlbench test suite.

Two kinds of tests live here:

* in-process tests (config, expansion, plugins, the training loop) share one registry of the
  built-in plugins, loaded without entry points so an installed third-party plugin cannot change
  what they see;
* end-to-end tests run the real ``dlbench`` command in a subprocess (``python -m dlbench.cli``)
  against a real SQLite MLflow store in ``tmp_path``.

Everything trains on a 600-example MNIST-1D and MLPs of width 16, so the suite stays a few
minutes on two CPU cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dlbench import hookimpl

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPO / "plugins" / "dlbench-example"
CLI_TIMEOUT = 600  # seconds: a hung subprocess fails its test instead of hanging the suite

# One thread: on a small, busy machine torch's thread pool spins against other processes and a
# training step gets ~50x slower; single-threaded CPU results are also bit-reproducible.
torch.set_num_threads(1)

# The smallest study file that exercises everything: two studies, one with one factor
# (dropout off/on), one with two (activation x depth), two seeds each: 4 + 8 = 12 trials.
TINY_STUDY = """\
[study]
name = "tiny"
description = "dlbench test suite: the smallest study that exercises everything"
seeds = 2

[baseline]
dataset = { name = "mnist1d", num_samples = 600 }
architecture = { name = "mlp", width = 16, depth = 1 }
optimizer = { name = "adam", lr = 0.01 }
epochs = 2
batch_size = 64

[studies.dropout]
question = "Does dropout help a small MLP?"

[studies.dropout.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_input = 0.1, p_hidden = 0.2 }] }

[studies.act_depth]
question = "How do activation and depth interact?"

[studies.act_depth.factors.activation]
relu = { activation = "relu" }
tanh = { activation = "tanh" }

[studies.act_depth.factors.depth]
1 = { architecture = { depth = 1 } }
2 = { architecture = { depth = 2 } }
"""
TINY_SEEDS = 2
TINY_EPOCHS = 2
TINY_TRIALS = {"dropout": 2 * TINY_SEEDS, "act_depth": 4 * TINY_SEEDS}

# The tiny baseline as a TOML fragment, for study files that vary something else.
TINY_BASELINE = """\
[baseline]
dataset = { name = "mnist1d", num_samples = 600 }
architecture = { name = "mlp", width = 16, depth = 1 }
optimizer = { name = "adam", lr = 0.01 }
epochs = 2
batch_size = 64
"""


def write_study(directory: Path, text: str, name: str = "study.toml") -> Path:
    """Write a study file (dedented) into ``directory`` and return its path."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def write_plugin(directory: Path, name: str, code: str) -> Path:
    """Write a local plugin module ``<directory>/plugins/<name>.py`` and return its path."""
    path = Path(directory) / "plugins" / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def ctrl_c_enabled() -> None:
    """``preexec_fn`` of a subprocess that a test stops with SIGINT, as Ctrl-C does: Python raises
    KeyboardInterrupt on SIGINT only when it is not ignored at its start, and a test suite started
    in the background (``.ci/run &``) runs with it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_env(extra: dict[str, str] | None = None, *, autoload: bool = True) -> dict[str, str]:
    """The environment of a dlbench subprocess.

    No MLFLOW_TRACKING_URI leaks in from the caller's shell, torch uses one thread (see above),
    and ``autoload=False`` sets DLBENCH_DISABLE_PLUGIN_AUTOLOAD for the tests that need it.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DLBENCH_DISABLE_PLUGIN_AUTOLOAD")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    if not autoload:
        env["DLBENCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.update(extra or {})
    return env


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``python -m dlbench.cli *args`` in a real subprocess; return its CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "dlbench.cli", *map(str, args)], cwd=cwd,
                          env=env if env is not None else cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def the_preflight_problem(trials, registry, tmp_path: Path) -> str:
    """The one problem the preflight reports for ``trials`` (of a throwaway study file)."""
    from dlbench.config import parse_study_file
    from dlbench.preflight import PreflightError, preflight

    study_file = parse_study_file({"studies": {"s": {"levels": {"x": {}}}}}, tmp_path / "t.toml")
    with pytest.raises(PreflightError) as err:
        preflight(study_file, trials, registry)
    (problem,) = err.value.problems
    return problem


def describe_result(proc: subprocess.CompletedProcess) -> str:
    """The whole story of a subprocess, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def plugins():
    """The built-in plugins only (no entry points, no local folder), loaded once."""
    from dlbench.plugins import load_plugins

    return load_plugins(None, autoload=False)


@pytest.fixture(scope="session")
def registry(plugins):
    return plugins.registry


@pytest.fixture
def registry_with():
    """``registry_with(kind, name, factory)``: the built-ins plus one component."""
    from dlbench.plugins import load_plugins

    def make(kind, name, factory):
        registry = load_plugins(None, autoload=False).registry
        registry.add(kind, name, factory, "test")
        return registry, registry.get(kind, name)

    return make


@pytest.fixture(scope="session")
def tiny_data(registry):
    """The 600-example MNIST-1D on the CPU with a 10% validation split: 480/48 train/val, 120 test."""
    from dlbench.data import to_device

    dataset = registry.get("dataset", "mnist1d").factory(num_samples=600)
    return to_device(dataset, 0.1, torch.device("cpu"))


@pytest.fixture
def make_trials(registry):
    """``make_trials(baseline_overrides, levels=None, seeds=1, reg=registry)`` -> expanded trials.

    Goes through the real parse + expand path with the tiny baseline underneath.
    """
    from dlbench.config import parse_study_file
    from dlbench.study import expand

    def make(baseline: dict | None = None, levels: dict | None = None, seeds=1, reg=None):
        base = {"dataset": {"name": "mnist1d", "num_samples": 600},
                "architecture": {"name": "mlp", "width": 16, "depth": 1},
                "optimizer": {"name": "adam", "lr": 0.01}, "epochs": 2, "batch_size": 64}
        raw = {"study": {"name": "t", "seeds": seeds}, "baseline": {**base, **(baseline or {})},
               "studies": {"s": {"levels": levels or {"only": {}}}}}
        return expand(parse_study_file(raw, Path("t.toml")), reg if reg is not None else registry)

    return make


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created (schema migrated) once for the session.

    Creating the tables takes MLflow ~10 s; end-to-end tests copy this file instead
    (``new_store``), so each still gets its own real, empty store.
    """
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(sqlite_uri(db)).search_experiments()
    assert db.is_file()
    return db


def copy_store(template: Path, directory: Path) -> Path:
    """A fresh, empty MLflow store ``directory/mlflow.db``, copied from ``template``."""
    db = Path(directory) / "mlflow.db"
    shutil.copyfile(template, db)
    return db


@pytest.fixture
def new_store(mlflow_template):
    """``new_store(directory)`` -> path of a fresh, empty MLflow store ``directory/mlflow.db``."""
    return lambda directory: copy_store(mlflow_template, directory)


@pytest.fixture
def study_in_process(tmp_path, new_store):
    """``study_in_process(text, device, **run_study_options)`` -> (plugins, tracking URI, the trial
    runs): the study file ``TINY_BASELINE + text`` run by ``run_study`` in this process (one job)
    into a fresh store; ``reproduce(run_id)`` on the result re-runs a trial as `dlbench reproduce`."""
    import io

    from mlflow.tracking import MlflowClient

    from dlbench.config import read_study_file
    from dlbench.plugins import load_plugins
    from dlbench.runner import run_study
    from dlbench.settings import RunOptions
    from dlbench.study import expand

    def run(text: str, device, **options):
        plugins = load_plugins(None, autoload=False)
        sf = read_study_file(write_study(tmp_path, TINY_BASELINE + text))
        uri = sqlite_uri(new_store(tmp_path))
        settings = RunOptions(device=str(device), tracking_uri=uri, reports_dir=tmp_path / "reports", jobs=1,
                              checkpoint_dir=tmp_path / "ckpt", **options)
        run_study(sf, expand(sf, plugins.registry), plugins, settings, io.StringIO())
        client = MlflowClient(uri)
        runs = [r for r in client.search_runs([client.get_experiment_by_name(sf.name).experiment_id])
                if r.data.tags.get("dlbench.role") == "trial"]
        return plugins, uri, runs

    return run


def reproduce_in_process(run_id: str, plugins, uri: str, device):
    """`dlbench reproduce` of ``run_id`` in this process, with tolerance 0: its verdict."""
    import io

    from dlbench.reproduce import reproduce

    return reproduce(run_id, plugins, tracking_uri=uri, device=device, tolerance=0.0, data_dir=None,
                     stream=io.StringIO())


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    """plugins/dlbench-example installed (offline, as a wheel build) into a temporary site dir."""
    site = tmp_path_factory.mktemp("example-site") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(EXAMPLE_PLUGIN)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, env=cli_env())
    assert proc.returncode == 0, describe_result(proc)
    assert (site / "dlbench_example" / "__init__.py").is_file()
    return site


class MlflowServer:
    """A real ``mlflow server`` subprocess on 127.0.0.1 over a SQLite store and an artifact folder
    in ``directory``: ``start()`` returns once ``/health`` answers, ``kill()`` is SIGKILL to the
    whole process group (``mlflow server`` runs uvicorn as a child), ``start()`` again restarts
    it on the same port with the same store."""

    START_TIMEOUT = 120  # seconds; it takes ~7 s on two busy cores

    def __init__(self, directory: Path, store: Path):
        self.directory = Path(directory)
        self.store = store
        with socket.socket() as probe:  # a free port (the kernel's pick, released for the server)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = self.directory / "mlflow-server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        import urllib.request

        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", sqlite_uri(self.store),
               "--artifacts-destination", str(self.directory / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        env = cli_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job-runner processes
        with open(self.log, "a", encoding="utf-8") as log:
            self.process = subprocess.Popen(cmd, cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}):\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"mlflow server not answering after {self.START_TIMEOUT} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
        self.process = None


@pytest.fixture
def mlflow_server(tmp_path, mlflow_template):
    """A started :class:`MlflowServer` with a fresh, empty store, killed at teardown."""
    folder = tmp_path / "server"
    folder.mkdir()
    server = MlflowServer(folder, copy_store(mlflow_template, folder)).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def module_mlflow_server(tmp_path_factory, mlflow_template):
    """One started :class:`MlflowServer` for a whole test module (its tests share the store), killed
    after the module."""
    folder = tmp_path_factory.mktemp("server")
    server = MlflowServer(folder, copy_store(mlflow_template, folder)).start()
    yield server
    server.kill()


class NoHooks:
    """Observers that do nothing: the ``hook`` of ``run_trial``/``run_stack`` for a bare trial."""

    def __getattr__(self, name):
        return lambda **kwargs: None


class StopAfter(NoHooks):
    """Interrupts training as Ctrl-C would, at the end of epoch ``epoch``: pass it as the hook
    itself, or register it as a plugin beside the others."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt
