"""Reading what a store already holds: earlier trials (for resume) and single runs (reproduce)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dlbench.errors import UserError
from dlbench.tracking import keys
from dlbench.tracking.server import require_reachable

HEARTBEAT_STALE_S = 15 * 60  # a RUNNING run on another host with no heartbeat this long is dead
TRIAL_ROLES = ("trial", "tuning")  # the runs of trials a study run skips, resumes or claims (not reproductions)
TRIAL_TAG = "dlbench.trial"  # a trial's identity in its study run (``Trial.key``: ``dropout/on/seed=0``)
SAME_AS_TAG = "dlbench.same_as"  # the run whose training a trial's run records (an identical trial's)
REPRODUCES_TAG = "dlbench.reproduces"  # on a reproduction's run: the run it re-ran


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    start_time: int
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each

    @property
    def config_hash(self) -> str:
        return self.tags.get("dlbench.config_hash", "")

    @property
    def trial(self) -> str:
        """The trial's name in its study run (runs from before the tag: from their study, level
        and seed tags, or their run name)."""
        tags = self.tags
        if TRIAL_TAG in tags:
            return tags[TRIAL_TAG]
        if tags.get("dlbench.role") == "trial" and "dlbench.study" in tags:
            return f"{tags['dlbench.study']}/{tags.get('dlbench.level', '')}/seed={tags.get('dlbench.seed', '')}"
        return tags.get("mlflow.runName", self.run_id)

    @property
    def title(self) -> str:
        """The trial as the terminal names it: its study, then its run name (``dropout/on, seed=0``)."""
        return f"{self.tags.get('dlbench.study', '')}/{self.tags.get('mlflow.runName', self.trial)}"

    @property
    def ended(self) -> bool:
        """Finished, or diverged: a result, never trained again (a failed run is)."""
        return self.status == "FINISHED" or self.tags.get("dlbench.status") == "diverged"

    @property
    def is_record(self) -> bool:
        """A record of an identical trial's run (``dlbench.same_as``), not a training of its own."""
        return SAME_AS_TAG in self.tags

    @property
    def studies(self) -> list[str]:
        """The studies a study run ran (see :func:`studies_ran`)."""
        return studies_ran(self.params)

    @property
    def trained_in(self) -> str:
        """The run that trained it: itself, or the one it records (``dlbench.same_as``)."""
        return self.tags.get(SAME_AS_TAG) or self.run_id

    def process_alive(self) -> bool:
        """Whether the process that owns this RUNNING run still runs (pid on this host, else
        a recent heartbeat)."""
        return process_alive(self.tags.get("dlbench.host", ""), self.tags.get("dlbench.pid", ""),
                             self.tags.get("dlbench.heartbeat", ""))


def studies_ran(params: dict[str, str]) -> list[str]:
    """The studies of a study run, from its ``studies`` param: a JSON list (names hold commas),
    comma-separated in runs of older dlbench versions."""
    listed = params.get("studies", "")
    return json.loads(listed) if listed.startswith("[") else [s for s in listed.split(",") if s]


def trained_on(tags: dict[str, str]) -> str:
    """The machine that trained a trial run (``dlbench.worker_host``), else the one that logged it."""
    return tags.get("dlbench.worker_host") or tags.get("dlbench.host", "")


def process_alive(host: str, pid: str, heartbeat: str = "") -> bool:
    """Whether dlbench process ``pid`` of ``host`` still runs: looked up when it is on this host
    (a pid reused by another program does not count), else judged by its last heartbeat."""
    if host == socket.gethostname() and pid and pid.isdigit():
        if int(pid) == os.getpid():
            return True
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():
            try:
                return b"dlbench" in cmdline.read_bytes()  # a reused pid is someone else's
            except OSError:
                return False
        try:
            os.kill(int(pid), 0)
            return True
        except (ProcessLookupError, PermissionError, OSError):
            return False
    return heartbeat.replace(".", "", 1).isdigit() and time.time() - float(heartbeat) < HEARTBEAT_STALE_S


def _stored(run) -> StoredRun:
    return StoredRun(run.info.run_id, run.info.status, run.info.start_time, dict(run.data.tags),
                     dict(run.data.params), dict(run.data.metrics))


def search_all(client: MlflowClient, experiment_id: str, tags: dict[str, str], where: str = "") -> list:
    """Every MLflow run of the experiment whose tags have exactly these values (and that matches
    ``where``, a filter on attributes), newest first, across result pages."""
    filter_string = " and ".join(c for c in (keys.tags_filter(tags), where) if c)
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return [r for r in runs if keys.has_tags(r.data.tags, tags)]  # a LIKE filter matches more


def search(client: MlflowClient, experiment_id: str, tags: dict[str, str], where: str = "") -> list[StoredRun]:
    return [_stored(r) for r in search_all(client, experiment_id, tags, where)]


def trial_runs(client: MlflowClient, experiment_id: str, config_hashes=None,
               running: bool = False) -> dict[str, list[StoredRun]]:
    """Trial runs of an experiment by config hash, newest first: all of them, or those of
    ``config_hashes`` (a few: one query each), or the RUNNING ones (``running``)."""
    where = "attributes.status = 'RUNNING'" if running else ""
    if config_hashes is not None and len(config_hashes) <= 8:
        runs = [r for h in config_hashes for r in search(client, experiment_id, {"dlbench.config_hash": h}, where)
                if r.tags.get("dlbench.role") in TRIAL_ROLES]
    else:
        runs = [r for role in TRIAL_ROLES for r in search(client, experiment_id, {"dlbench.role": role}, where)]
    by_hash: dict[str, list[StoredRun]] = {}
    for run in sorted(runs, key=lambda r: r.start_time, reverse=True):
        if config_hashes is None or run.config_hash in config_hashes:
            by_hash.setdefault(run.config_hash, []).append(run)
    return by_hash


def child_runs(client: MlflowClient, experiment_id: str, parent_id: str, trials=None,
               running: bool = False) -> dict[str, list[StoredRun]]:
    """The trial runs under the study run ``parent_id`` by trial name (``StoredRun.trial``),
    newest first: all of them, or those of the trial names ``trials`` (a few: one query each), or
    the RUNNING ones (``running``)."""
    where = "attributes.status = 'RUNNING'" if running else ""
    if trials is not None and len(trials) <= 8:
        runs = [r for name in trials
                for r in search(client, experiment_id, {"mlflow.parentRunId": parent_id, TRIAL_TAG: name}, where)]
    else:
        runs = search(client, experiment_id, {"mlflow.parentRunId": parent_id}, where)
    by_trial: dict[str, list[StoredRun]] = {}
    for run in sorted(runs, key=lambda r: r.start_time, reverse=True):
        if run.tags.get("dlbench.role") in TRIAL_ROLES and (trials is None or run.trial in trials):
            by_trial.setdefault(run.trial, []).append(run)
    return by_trial


def study_runs(client: MlflowClient, experiment_id: str, study_hash: str) -> list[StoredRun]:
    """The study runs of the study ``study_hash`` (the same trials and searches) that a run may
    continue, newest first: a reproduction's (``dlbench reproduce --study``) is never continued."""
    runs = search(client, experiment_id, {"dlbench.role": "study", "dlbench.study_hash": study_hash})
    return [r for r in runs if REPRODUCES_TAG not in r.tags]


def latest_parent(client: MlflowClient, experiment_id: str, study_hash: str) -> StoredRun | None:
    runs = study_runs(client, experiment_id, study_hash)
    return runs[0] if runs else None


def get_run(client: MlflowClient, run_id: str) -> StoredRun:
    return _stored(client.get_run(run_id))


def histories_of_runs(client: MlflowClient, runs: dict[str, list[str]], threads: int = 8) -> list[tuple]:
    """(run id, key, step, value) of every logged value of the metrics ``runs`` names (run id ->
    its metric keys); see :func:`metric_points`."""
    return [(run_id, key, m.step, m.value) for run_id, key, m in metric_points(client, runs, threads)]


def metric_points(client: MlflowClient, runs: dict[str, list[str]], threads: int = 8) -> list[tuple]:
    """(run id, key, MLflow ``Metric``: step, timestamp, value) of every logged value of the
    metrics ``runs`` names (run id -> its metric keys). A SQL store answers one query per key for
    all runs; other stores (an HTTP server) one request per run and key, several at a time."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None)
    if bulk is not None:
        by_key: dict[str, list[str]] = {}
        for run_id, names in runs.items():
            for key in names:
                by_key.setdefault(key, []).append(run_id)
        out = []
        for key, run_ids in by_key.items():
            for i in range(0, len(run_ids), 500):  # bounded IN (...) lists
                out += [(m.run_id, key, m) for m in bulk(run_ids[i:i + 500], key, max_results=None)]
        return out
    pairs = [(run_id, key) for run_id, keys in runs.items() for key in keys]
    with ThreadPoolExecutor(threads) as pool:
        histories = list(pool.map(lambda rk: client.get_metric_history(*rk), pairs))
    return [(run_id, key, m) for (run_id, key), hist in zip(pairs, histories) for m in hist]


def metric_histories(client: MlflowClient, run_id: str, keys) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every logged value of each metric, by step."""
    out = {}
    for key in keys:
        out[key] = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return out


class Store:
    """Read access to one tracking store, for commands that start from a run id."""

    def __init__(self, tracking_uri: str):
        require_reachable(tracking_uri)  # a server that is down: said in a second, not after minutes of retries
        self.client = MlflowClient(tracking_uri)

    def run(self, run_id: str) -> StoredRun:
        try:
            return get_run(self.client, run_id)
        except MlflowException as exc:
            raise UserError(f"run {run_id!r} is not in this tracking store ({exc.message.splitlines()[0]}); "
                            "check the run id and --tracking-uri") from None

    def experiment_name(self, run: StoredRun) -> str:
        run_info = self.client.get_run(run.run_id).info
        return self.client.get_experiment(run_info.experiment_id).name

    def config(self, run_id: str) -> dict:
        """The resolved config a trial run recorded (its config.json artifact)."""
        return self.artifact_json(run_id, "config.json")

    def artifact_json(self, run_id: str, name: str) -> dict:
        """A JSON artifact of a run (config.json, stack.json)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, name, tmp)
            return json.loads(Path(path).read_text(encoding="utf-8"))

    def artifact_text(self, run_id: str, name: str) -> str | None:
        """A text artifact of a run (a study run's plugins.json, plugins/<file>.py); None when it has none."""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                return Path(self.client.download_artifacts(run_id, name, tmp)).read_text(encoding="utf-8")
        except (MlflowException, OSError):
            return None

    def histories(self, run_id: str, keys) -> dict[str, list[tuple[int, float]]]:
        return metric_histories(self.client, run_id, keys)

    def histories_of(self, runs: dict[str, list[str]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """(step, value) of every logged value of the metrics ``runs`` names (run id -> its metric
        keys), by run and key, by step: read in bulk (a study's trials at once)."""
        out: dict[str, dict[str, list[tuple[int, float]]]] = {run_id: {} for run_id in runs}
        for run_id, key, step, value in sorted(histories_of_runs(self.client, runs), key=lambda r: r[2]):
            out[run_id].setdefault(key, []).append((step, value))
        return out

    def trials_of(self, study_run: StoredRun) -> dict[str, StoredRun]:
        """The trial runs under the study run ``study_run`` by trial name (``dlbench.trial``), each
        the newest of its name, in the order the study ran them (``dlbench.trial_index``)."""
        experiment_id = self.client.get_run(study_run.run_id).info.experiment_id
        found = child_runs(self.client, experiment_id, study_run.run_id)
        newest = sorted((runs[0] for runs in found.values()),
                        key=lambda r: int(r.tags.get("dlbench.trial_index", "0") or 0))
        return {run.trial: run for run in newest}

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
