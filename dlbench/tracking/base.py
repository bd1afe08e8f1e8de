"""What both halves of a :class:`~dlbench.tracking.writer.Tracker` share: the tracking store and
experiment it writes to, what every trial run carries (:class:`StudyContext`, the process's
provenance), and the trial runs this process opens (:meth:`TrackerBase.open_run`).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dlbench.errors import UserError
from dlbench.paths import artifact_location
from dlbench.provenance import components_used, environment, git_commit
from dlbench.study import Trial, flatten
from dlbench.tracking import keys, store
from dlbench.tracking.lock import StoreLock, store_lock
from dlbench.tracking.resilient import ResilientClient

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter on first use
logging.getLogger("alembic").setLevel(logging.WARNING)

BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch call
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI opens on runs, not traces


@dataclass
class StudyContext:
    """What every trial run of a study carries besides its own config: provenance tags (data
    version, determinism, dirty tree) and artifacts (installed packages, the uncommitted diff)."""

    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    registry: object = None  # to name each component's origin and version on the trial's run
    # the study run's own, set when it is made: the run options that change a trial's bits, the
    # local plugin files (``plugins/<file>``, their sha256 in ``plugins.json``), a reproduction's tags
    study_tags: dict[str, str] = field(default_factory=dict)
    study_artifacts: dict[str, str] = field(default_factory=dict)

    def plugin_tags(self, trial: Trial) -> dict[str, str]:
        if self.registry is None:
            return {}
        return {f"dlbench.plugin.{kind}": f"{name} [{origin}]" for kind, name, origin in components_used(trial, self.registry)}


class TrackerBase:
    """The store, the experiment and the trial runs of a :class:`~dlbench.tracking.writer.Tracker`:
    the state its study-run protocol (``study_run.StudyRunClaims``) and its hook implementations
    (``observer.Observer``) share, set up once here."""

    def __init__(self, tracking_uri: str, experiment: str, flush_seconds: float = 5.0, lock: StoreLock | None = None,
                 timeout_s: float | None = None):
        self.tracking_uri = tracking_uri
        self.lock = lock or store_lock(tracking_uri)  # other dlbench processes may share the store
        self.experiment = experiment
        self.flush_seconds = flush_seconds
        self.parent_id: str | None = None
        self.run_ids: dict[int, str] = {}  # trial index -> child run id
        self._buffer: dict[str, list[Metric]] = {}
        self._last_flush = time.monotonic()
        self._device = None
        self._commit: str | None = None
        self._context = StudyContext()
        self._logged_steps: dict[str, dict[str, int]] = {}  # run id -> metric -> last step logged
        self._started: set[str] = set()  # runs whose trial started in this process (a second start: a retry)
        self._restarts: dict[str, int] = {}
        self._ended: set[str] = set()  # runs this process ended (the others it opened are still RUNNING)
        self.role = "trial"  # "reproduction" for `dlbench reproduce` re-runs (never resumed or skipped to)
        self.extra_child_tags: dict[str, str] = {}
        self.level_colors: dict[tuple[str, str], str] = {}  # (study, level) -> its runs' colour in the UI
        self._source = {"mlflow.user": _user(), "mlflow.source.type": "LOCAL"}  # the UI's Created by, Source
        self._name_prefix = ""  # of the trials' run names
        self.described = ""  # the study run's description below the progress line (``study_run.About``)
        self.progress_line = ""  # the progress published last (``study_progress.progress_line``)
        try:
            with self.lock:  # the first client of a new SQLite file creates its tables
                # a tracking server that goes away is waited for (timeout_s, None: 600), its writes held meanwhile
                self.client = ResilientClient(MlflowClient(tracking_uri), tracking_uri, timeout_s)
                self.experiment_id = self._experiment_id(experiment)
        except Exception as exc:
            raise UserError(f"cannot open the MLflow tracking store {tracking_uri!r}: {exc}. Check --tracking-uri "
                            "(e.g. sqlite:///mlflow.db, a directory, or http://127.0.0.1:5000 of a running "
                            "`mlflow server`).") from exc

    def _experiment_id(self, name: str) -> str:
        """The experiment ``name``, made when missing, declared a model-training experiment (MLflow
        3's UI opens any other on its GenAI traces view, with the runs one switch away)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if EXPERIMENT_KIND[0] not in exp.tags:  # made by an earlier dlbench (a kind set by hand is kept)
                self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            return exp.experiment_id
        try:
            # artifacts beside a SQLite file, not in ./mlruns (MLflow's default: the working directory)
            return self.client.create_experiment(name, artifact_location=artifact_location(self.tracking_uri, name),
                                                 tags=dict([EXPERIMENT_KIND]))
        except MlflowException:  # another process created it first (a server store: no lock)
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def open_run(self, trial: Trial, extra_tags: dict[str, str] | None = None) -> str:
        """The trial's run: made now (RUNNING, with this process's host and pid: others see it
        as taken) unless it was made or adopted already."""
        if trial.index in self.run_ids:
            return self.run_ids[trial.index]
        name = keys.run_name(self._name_prefix + trial.run_name)
        tags = {
            "mlflow.runName": name,
            # a search's tuning trial is a run of its own role: the study's statistics read the trials
            "dlbench.role": "tuning" if trial.is_tuning and self.role == "trial" else self.role,
            store.TRIAL_TAG: trial.key,
            "dlbench.study": trial.study,
            "dlbench.level": trial.level,
            "dlbench.seed": str(trial.seed),
            "dlbench.config_hash": trial.config_hash,
            "dlbench.group_hash": trial.group_hash,
            "dlbench.trial_index": str(trial.index),
            **{keys.key(f"dlbench.factor.{f}"): lvl for f, lvl in trial.levels.items()},
            "dlbench.levels": json.dumps(trial.levels, ensure_ascii=False),  # exact factor names, for the reader
            **environment(self._device),
            **self._context.tags,
            **liveness_tags(),
            **self._source,
        }
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
        if trial.tuning is not None:  # which search, what it tried (tuning) or chose (final)
            tags |= trial.tuning.tags()
        tags |= self.extra_child_tags | (extra_tags or {})
        if self._commit:
            tags["mlflow.source.git.commit"] = self._commit
        if color := self.level_colors.get((trial.study, trial.level)):
            tags["mlflow.runColor"] = color
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        self.run_ids[trial.index] = run_id
        self.client.log_dict(run_id, trial.config, "config.json")
        for name, text in self._context.artifacts.items():
            self.client.log_text(run_id, text, name)
        # study, level and factors as params too: the UI's "group by" and parallel-coordinates
        # plots list params, so a level groups its seeds in one click
        params = {"study": trial.study, "level": trial.level,
                  **{f"factor.{f}": lvl for f, lvl in trial.levels.items()}, **flatten(trial.config)}
        plist = [Param(keys.key(k), v) for k, v in params.items()]  # a plugin or factor name may be any text
        for i in range(0, len(plist), 100):
            self.client.log_batch(run_id, params=plist[i:i + 100])
        return run_id

    def start_reproduction(self, original: store.StoredRun, device, context: StudyContext) -> None:
        """Log the next trial as a reproduction of ``original``: named ``reproduce of <its name>``,
        nested under its study run, role ``reproduction`` (never resumed, skipped to or reported
        as a trial: those look for ``dlbench.role = trial``)."""
        self._device, self._context, self.role = device, context, "reproduction"
        self._commit = git_commit(Path.cwd())[0]
        self._name_prefix = "reproduce of "
        self._source["mlflow.source.name"] = f"dlbench reproduce {original.run_id}"
        self.extra_child_tags = {"dlbench.reproduces": original.run_id,
                                 "mlflow.note.content": f"Re-run of {original.run_id} by `dlbench reproduce`."}
        if original.tags.get("mlflow.parentRunId"):
            self.extra_child_tags["mlflow.parentRunId"] = original.tags["mlflow.parentRunId"]


def liveness_tags() -> dict[str, str]:
    """The tags that say which live process holds a run (host, pid, the last heartbeat)."""
    return {"dlbench.host": socket.gethostname(), "dlbench.pid": str(os.getpid()),
            "dlbench.heartbeat": f"{time.time():.0f}"}


def _user() -> str:
    """Who runs dlbench (MLflow's ``mlflow.user``): the login name, else the uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name
        return str(os.getuid())
