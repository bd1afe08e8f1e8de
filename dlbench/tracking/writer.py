"""Writing a study to MLflow: one parent run per study invocation, one nested child run per trial.

A :class:`Tracker` is a dlbench plugin: it subscribes to
the lifecycle hooks, so the training loop never sees it. Metrics are buffered and written with
``log_batch`` (one store round-trip per flush, not per value).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dlbench import hookimpl
from dlbench.errors import UserError
from dlbench.paths import artifact_location
from dlbench.tracking import keys, store
from dlbench.tracking.lock import StoreLock, store_lock
from dlbench.tracking.resilient import ResilientClient
from dlbench.provenance import code_version, command_line, components_used, environment, git_commit
from dlbench.study import Plan, Trial, flatten

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter on first use
logging.getLogger("alembic").setLevel(logging.WARNING)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: ./mlflow.db, artifacts in ./mlruns
BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch call
PROCESS_TAG = "dlbench.process."  # + host.pid: a process working on a study's parent run
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI opens on runs, not traces
# a pruned tuning trial ended as its search wanted: FINISHED (never resumed), dlbench.status = pruned
MLFLOW_STATUS = {"finished": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
                 "interrupted": "KILLED"}


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def attach_report(tracking_uri: str, run_id: str, directory: Path) -> None:
    """Attach a report folder to a study's parent run (finished or not) as ``reports/<folder>``."""
    MlflowClient(tracking_uri).log_artifacts(run_id, str(directory), artifact_path=f"reports/{directory.name}")


class Tracker:
    """Logs a study to MLflow. Register it with the plugin manager for the study's duration."""

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
        self._source = {"mlflow.user": _user(), "mlflow.source.type": "LOCAL"}  # the UI's Created by, Source
        self._name_prefix = ""  # of the trials' run names
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

    # -- the study (parent run) --------------------------------------------------------------

    def start_study(self, study_file, plan: Plan, device, context: StudyContext | None = None,
                    resume: bool = False) -> str:
        """Open the parent run of ``plan`` (its trials and searches): the latest one of the same
        study (same trials and searches) when ``resume``,
        so a re-run after a crash continues it and processes started together share it, else a
        new one. A tag ``dlbench.process.<host>.<pid>`` names each process working on it."""
        self._device = device
        self._context = context or StudyContext()
        commit, _ = git_commit(study_file.path.resolve().parent)
        self._commit = commit
        self._source["mlflow.source.name"] = str(study_file.path)
        study_hash = study_hash_of(plan)
        with self.lock:  # one parent run for processes started at once: the first creates it, the others join
            previous = store.latest_parent(self.client, self.experiment_id, study_hash) if resume else None
            if previous is not None:
                return self._join(previous)
            self._new_parent(study_file, plan, study_hash)
        if resume and not self.lock.exclusive:  # no lock (a tracking server): the earliest one made at once wins
            made = store.search(self.client, self.experiment_id,
                                {"dlbench.role": "study", "dlbench.study_hash": study_hash})
            first = min(made, key=lambda r: (r.start_time, r.run_id))
            if first.run_id != self.parent_id:
                self.client.delete_run(self.parent_id)
                return self._join(first)
        return self.parent_id

    def _join(self, previous: store.StoredRun) -> str:
        """Continue the parent run ``previous``: an earlier invocation's, or one another process works on."""
        self.parent_id = previous.run_id
        self.client.update_run(self.parent_id, status="RUNNING")
        runs = int(previous.tags.get("dlbench.invocations", "1")) + 1
        self.client.log_batch(self.parent_id, tags=[RunTag("dlbench.invocations", str(runs)),
                                                    RunTag("dlbench.command", command_line()),
                                                    RunTag(_process_tag(), "working")])
        return self.parent_id

    def _new_parent(self, study_file, plan: Plan, study_hash: str) -> str:
        studies = plan.studies
        tags = {
            "mlflow.runName": study_file.name,
            "mlflow.note.content": description_of(study_file, studies),
            **self._source,
            "dlbench.role": "study",
            "dlbench.study_file": str(study_file.path.resolve()),  # absolute: a report folder's marker names it
            "dlbench.study_hash": study_hash,
            "dlbench.invocations": "1",
            "dlbench.command": command_line(),
            _process_tag(): "working",
            **environment(self._device),
        }
        tags |= code_version(study_file.path.resolve().parent).tags()  # the commit, or why there is none
        run = self.client.create_run(self.experiment_id, run_name=study_file.name, tags=tags)
        self.parent_id = run.info.run_id
        params = {
            "studies": json.dumps(studies, ensure_ascii=False),  # names hold commas
            "num_trials": str(plan.total),
            **{f"baseline.{k}": v for k, v in flatten(study_file.baseline).items()},
        }
        self.client.log_batch(self.parent_id, params=[Param(k, v) for k, v in params.items()])
        self.client.log_text(self.parent_id, study_file.text, Path(study_file.path).name)
        return self.parent_id

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

    def existing_trials(self, config_hashes=None) -> dict[str, list[store.StoredRun]]:
        """Trial runs already in this experiment, by config hash (newest first): all, or those
        of ``config_hashes``. The runs this tracker opened are left out."""
        found = store.trial_runs(self.client, self.experiment_id, config_hashes)
        mine = set(self.run_ids.values())
        return {h: [r for r in runs if r.run_id not in mine] for h, runs in found.items()}

    def study_trials(self, names=None) -> dict[str, list[store.StoredRun]]:
        """The trial runs under this study run by trial name (newest first): all, or those of the
        trial names ``names``. The runs this tracker opened are left out. Runs from before the
        ``dlbench.trial`` tag get it now, so that a claim (one query per name) finds them."""
        found = store.child_runs(self.client, self.experiment_id, self.parent_id, names)
        mine = set(self.run_ids.values())
        for runs in found.values():
            for run in runs:
                if store.TRIAL_TAG not in run.tags:
                    self.client.set_tag(run.run_id, store.TRIAL_TAG, run.trial)
        return {name: [r for r in runs if r.run_id not in mine] for name, runs in found.items()}

    def rival(self, trial: Trial) -> store.StoredRun | None:
        """Another process's run of ``trial`` under this study run that claimed it before this
        one did (by start time, then run id) and has finished it or is running it. Only where
        claims take no lock (a tracking server): two processes may then claim one trial at the
        same moment."""
        mine = store.get_run(self.client, self.run_ids[trial.index])
        for run in self.study_trials([trial.run_name]).get(trial.run_name, []):
            taken = run.ended or (run.status == "RUNNING" and run.process_alive())
            if taken and (run.start_time, run.run_id) < (mine.start_time, mine.run_id):
                return run
        return None

    def stored(self, run_id: str) -> store.StoredRun:
        """A run as the store has it now."""
        return store.get_run(self.client, run_id)

    def epoch_history(self, run: store.StoredRun) -> list[dict[str, float]]:
        """A run's per-epoch metrics (step = epoch), one dict per epoch from 0."""
        keys_ = [k for k in run.metrics if "." not in k and "/" not in k]
        histories = store.metric_histories(self.client, run.run_id, keys_)
        epochs = 1 + max((step for h in histories.values() for step, _ in h), default=-1)
        rows: list[dict[str, float]] = [{} for _ in range(epochs)]
        for key, history in histories.items():
            for step, value in history:
                rows[step][key] = value
        return rows

    def withdraw(self, trial: Trial) -> None:
        """Delete the run this process opened for ``trial``: another process claimed it first."""
        self.client.delete_run(self.run_ids.pop(trial.index))

    def retire(self, failed: list[store.StoredRun]) -> None:
        """Delete the failed runs of a trial about to train again (MLflow keeps them among the
        deleted runs, error.txt included): the trial keeps one run under its study."""
        for run in failed:
            self.client.delete_run(run.run_id)

    def running_elsewhere(self, trials) -> list[store.StoredRun]:
        """The RUNNING runs of ``trials`` under this study run that another live process is training."""
        names = {t.run_name for t in trials}
        found = store.child_runs(self.client, self.experiment_id, self.parent_id, running=True)
        mine = set(self.run_ids.values())
        return [r for name in names for r in found.get(name, []) if r.run_id not in mine and r.process_alive()]

    def record_same(self, trial: Trial, source: store.StoredRun, reused: bool = False) -> store.StoredRun:
        """Record ``trial`` under this study run from ``source``, the run of an identical trial
        (equal config hash): one of this file trained once (``reused`` False), or one of an
        earlier study run of this experiment. The new run carries its own study, level, seed and
        factors, ``source``'s outcome (status, metrics with their steps, how and where it
        trained) and ``dlbench.same_as`` = the run that trained it. Returns the new run."""
        origin = source.trained_in
        if origin != source.run_id:  # a record itself: read the run that trained
            source = store.get_run(self.client, origin)
        how = "reused from an earlier study run" if reused else "an identical trial of this study file"
        note = (f"Trained once as `{source.tags.get('mlflow.runName', origin)}` ({origin}), {how}: the same "
                "configuration and seed (equal `dlbench.config_hash`). This run records its outcome under "
                f"study `{trial.study}`, level `{trial.level}`.")
        run_id = self.open_run(trial, {store.SAME_AS_TAG: origin, "dlbench.same_as_name": source.trial,
                                       "dlbench.reused": str(reused).lower(), "mlflow.note.content": note})
        kept = {k: v for k, v in source.tags.items() if not _identity_tag(k)}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in kept.items()])
        histories = store.histories_of_runs(self.client, {origin: list(source.metrics)}, threads=1)  # one client thread
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for _, key, step, value in histories]
        for i in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(run_id, metrics=metrics[i:i + BATCH_LIMIT])
        self.client.set_terminated(run_id, source.status)
        self._ended.add(run_id)
        self.client.sync()
        return store.get_run(self.client, run_id)

    def adopt(self, trial: Trial, previous: store.StoredRun) -> str:
        """Continue ``previous`` (left RUNNING by a dead process, or KILLED) for ``trial``: the
        trial keeps one run; metrics already in the store are not written twice."""
        run_id = previous.run_id
        self.run_ids[trial.index] = run_id
        self.client.update_run(run_id, status="RUNNING")
        restarts = int(previous.tags.get("dlbench.restarts", "0")) + 1
        tags = {"dlbench.restarts": str(restarts), "dlbench.previous_pid": previous.tags.get("dlbench.pid", ""),
                "dlbench.previous_status": previous.status, **self._liveness()}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        histories = store.metric_histories(self.client, run_id, previous.metrics)
        self._logged_steps[run_id] = {k: max(step for step, _ in h) for k, h in histories.items() if h}
        return run_id

    def _liveness(self) -> dict[str, str]:
        return {"dlbench.host": socket.gethostname(), "dlbench.pid": str(os.getpid()),
                "dlbench.heartbeat": f"{time.time():.0f}"}

    def leave_study(self, stopping: bool = False) -> bool:
        """Take this process off the parent run; whether no other live process works on it
        any more (this one then ends it: :meth:`end_study`; else it stays RUNNING). Each
        process has its own tag, so two leaving at once both see the other gone."""
        if stopping:  # Ctrl-C, an error: an absent tracking server is not waited for
            self.client.stop_waiting()
            self.kill_open_runs()
        self.client.delete_tag(self.parent_id, _process_tag())
        tags = self.client.get_run(self.parent_id).data.tags
        others = []
        for key in [k for k in tags if k.startswith(PROCESS_TAG) and k != _process_tag()]:
            host, pid = key.removeprefix(PROCESS_TAG).rsplit(".", 1)
            if host == socket.gethostname() and not store.process_alive(host, pid):
                self.client.delete_tag(self.parent_id, key)  # killed before it could leave
            else:
                others.append(key)  # (one on another host counts until it leaves)
        self.client.sync()
        return not others

    def kill_open_runs(self) -> None:
        """End as KILLED (resumable) every run this process made or adopted and did not end: a
        trial claimed when Ctrl-C or SIGTERM came, before it started training (one in training
        is ended as interrupted by its executor)."""
        for run_id in [r for r in self.run_ids.values() if r not in self._ended]:
            self.client.set_terminated(run_id, "KILLED")
            self._ended.add(run_id)

    def end_study(self, status: str, summary: dict[str, int]) -> None:
        """End the parent run with ``status`` and ``summary`` (its tags ``dlbench.trials_*``)."""
        tags = [RunTag(f"dlbench.trials_{k}", str(v)) for k, v in summary.items()]
        self.client.log_batch(self.parent_id, tags=tags)
        self.client.set_terminated(self.parent_id, status)
        self.client.sync()

    def log_level_summary(self, study: str, trials: list[Trial]) -> None:
        """The final test accuracy of each level of ``study`` over its seeds, on the parent run
        (``<study>/<level>/test_accuracy_mean``, ``_std``, ``_n``; MLflow's UI shows them in a
        section per study): each trial's finished run under this study run, whichever process ran it."""
        found = store.child_runs(self.client, self.experiment_id, self.parent_id)
        by_level: dict[str, list[float]] = {}
        for trial in trials:
            finished = [r for r in found.get(trial.run_name, [])
                        if r.status == "FINISHED" and "test_accuracy" in r.metrics]
            if finished:
                by_level.setdefault(trial.level, []).append(finished[0].metrics["test_accuracy"])
        now = int(time.time() * 1000)
        metrics = []
        for level, values in by_level.items():
            # the exact mean of the values, rounded once: 0.6464, not 0.6464000000000001
            summary = {"mean": float(sum(map(Fraction, values)) / len(values)), "n": len(values)}
            if len(values) > 1:
                summary["std"] = statistics.stdev(values)
            metrics += [Metric(_summary_key(study, level, k), float(v), now, 0) for k, v in summary.items()]
        logged = self.client.get_run(self.parent_id).data.metrics  # a re-run that changed nothing adds nothing
        metrics = [m for m in metrics if logged.get(m.key) != m.value]
        for i in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(self.parent_id, metrics=metrics[i:i + BATCH_LIMIT])

    def log_report(self, directory: Path) -> None:
        """Attach a built report folder to the parent run."""
        self.client.log_artifacts(self.parent_id, str(directory), artifact_path=f"reports/{directory.name}")

    # -- trials (child runs), as hook implementations -------------------------------------------

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
            store.TRIAL_TAG: trial.run_name,
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
            **self._liveness(),
            **self._source,
        }
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
        if trial.tuning is not None:  # which search, what it tried (tuning) or chose (final)
            tags |= trial.tuning.tags()
        tags |= self.extra_child_tags | (extra_tags or {})
        if self._commit:
            tags["mlflow.source.git.commit"] = self._commit
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

    @hookimpl
    def dlbench_trial_start(self, trial: Trial, model, info: dict) -> None:
        run_id = self.open_run(trial)
        # where it trains: the worker's device, threads and host (this process opened the run)
        tags = {keys.key(k): v for k, v in info.get("environment", {}).items()}
        if run_id in self._started:  # trained again after its worker died (a Ray task's retry)
            self._restarts[run_id] = self._restarts.get(run_id, 0) + 1
            tags["dlbench.retries"] = str(self._restarts[run_id])
        if info.get("resumed_from_epoch") is not None:
            tags["dlbench.resumed_from_epoch"] = str(info["resumed_from_epoch"])
        if run_id in self._started or info.get("resumed_from_epoch") is not None:
            self._started.add(run_id)
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            return
        self._started.add(run_id)
        tags |= {"dlbench.dataset_hash": info["dataset_hash"], "dlbench.num_params": str(info["num_params"]),
                 "dlbench.num_classes": str(info.get("num_classes", "")),
                 **{keys.key(k): v for k, v in self._context.plugin_tags(trial).items()}}
        if info.get("preprocessing"):  # what each step fitted on this dataset, in order
            tags["dlbench.preprocessing"] = "; ".join(info["preprocessing"])
        stack = info.get("stack")
        tags["dlbench.stack_size"] = str(stack["size"] if stack else 1)  # how it ran: `reproduce` does the same
        if stack:
            tags |= {"dlbench.stack_id": stack["id"], "dlbench.stack_member": str(stack["member"]),
                     "dlbench.cuda_graphs": str(bool(stack.get("cuda_graphs"))).lower(),
                     "dlbench.stacked_init": str(bool(stack.get("stacked_init"))).lower()}
            self.client.log_dict(run_id, {"stack_id": stack["id"], "members": stack["members"]}, "stack.json")
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.log_text(run_id, repr(model), "model.txt")
        self._log_dataset(run_id, info)

    @hookimpl
    def dlbench_epoch_end(self, trial: Trial, epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        run_id = self.open_run(trial)
        self._buffer_new(run_id, metrics, now, epoch)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush(wait=False)  # a tracking server away: training goes on, the metrics held

    @hookimpl
    def dlbench_diagnostics(self, trial: Trial, step: int, values: dict[str, float]) -> None:
        # buffered like the epoch metrics; their step is the optimizer step, not the epoch
        now = int(time.time() * 1000)
        run_id = self.open_run(trial)
        self._buffer_new(run_id, values, now, step)

    def _buffer_new(self, run_id: str, values: dict[str, float], now: int, step: int) -> None:
        """Buffer the values whose step is past the last one logged: a resumed run, or a trial
        trained again from its checkpoint, sends steps that are logged already."""
        done = self._logged_steps.setdefault(run_id, {})
        fresh = [Metric(k, float(v), now, step) for k, v in values.items() if step > done.get(k, -1)]
        self._buffer.setdefault(run_id, []).extend(fresh)
        for metric in fresh:
            done[metric.key] = step

    @hookimpl
    def dlbench_checkpoint(self, trial: Trial, epoch: int) -> None:
        self.flush()

    @hookimpl
    def dlbench_trial_end(self, trial: Trial, result) -> None:
        run_id = self.open_run(trial)
        self.flush(wait=False)  # stored at once, or with the next run's creation if the server is away
        tags = [RunTag("dlbench.status", result.status), RunTag("dlbench.duration_s", f"{result.seconds:.2f}"),
                RunTag("dlbench.epochs_run", str(result.epochs_run))]
        self.client.log_batch(run_id, tags=tags)
        if result.error:
            self.client.log_text(run_id, result.error, "error.txt")
        self.client.set_terminated(run_id, MLFLOW_STATUS[result.status])
        self._ended.add(run_id)

    def flush(self, wait: bool = True) -> None:
        """Send the buffered metrics; ``wait``: until they are stored (a checkpoint, a report
        or the end of the study rely on them), waiting for a tracking server that went away."""
        beat = [RunTag("dlbench.heartbeat", f"{time.time():.0f}")]  # lets other hosts tell a live run
        for run_id, metrics in self._buffer.items():
            for i in range(0, len(metrics), BATCH_LIMIT):
                self.client.log_batch(run_id, metrics=metrics[i:i + BATCH_LIMIT], tags=beat if i == 0 else [])
        self._buffer.clear()
        self._last_flush = time.monotonic()
        if wait:
            self.client.sync()



    def _log_dataset(self, run_id: str, info: dict) -> None:
        """The dataset as an MLflow input (shown in the UI's Datasets column); the full hashes are tags."""
        source = info.get("dataset_source") or f"dlbench://{info.get('dataset', 'dataset')}"
        dataset = MetaDataset(LocalArtifactDatasetSource(source), name=info.get("dataset", "dataset"),
                              digest=info["dataset_hash"][:32])
        inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])]
        with self.lock:  # MLflow adds a dataset new to the experiment: a check, then an insert
            try:
                self.client.log_inputs(run_id, inputs)
            except MlflowException:  # no lock (a server): another process inserted it just now
                self.client.log_inputs(run_id, inputs)


@dataclass
class StudyContext:
    """What every trial run of a study carries besides its own config: provenance tags (data
    version, determinism, dirty tree) and artifacts (installed packages, the uncommitted diff)."""

    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    registry: object = None  # to name each component's origin and version on the trial's run

    def plugin_tags(self, trial: Trial) -> dict[str, str]:
        if self.registry is None:
            return {}
        return {f"dlbench.plugin.{kind}": f"{name} [{origin}]" for kind, name, origin in components_used(trial, self.registry)}


def description_of(study_file, studies: list[str]) -> str:
    """The parent run's description (Markdown, in the UI's run page): the study file's
    description and the question of each study it runs."""
    running = set(studies)
    questions = [f"- **{s.name}**: {s.question}" for s in study_file.studies if s.name in running and s.question]
    return "\n\n".join(part for part in (study_file.description, "\n".join(questions)) if part)


def _summary_key(study: str, level: str, statistic: str) -> str:
    """``dropout/on/test_accuracy_mean``; ``act_depth/activation relu depth 1/...`` for a level of
    several factors (MLflow keys refuse ``=`` and ``,``); a name MLflow refuses otherwise is slugged."""
    parts = [keys.key(name.replace("/", " ")) for name in (study, level.replace("=", " ").replace(",", " "))]
    return keys.key(f"{parts[0]}/{parts[1]}/test_accuracy_{statistic}")


SEARCH_TAGS = {"dlbench.search", "dlbench.tuned", "dlbench.tuned_from"}  # the trial's own search, not the source's
IDENTITY_TAGS = {store.TRIAL_TAG, store.SAME_AS_TAG, "dlbench.same_as_name", "dlbench.reused", "dlbench.role",
                 "dlbench.study", "dlbench.level", "dlbench.seed", "dlbench.levels", "dlbench.trial_index",
                 "dlbench.host", "dlbench.pid", "dlbench.heartbeat", "mlflow.runName", "mlflow.parentRunId",
                 "mlflow.note.content", "mlflow.user", "mlflow.source.name", "mlflow.source.type",
                 "dlbench.create_id", "dlbench.replaces"}


def _identity_tag(key: str) -> bool:
    """A tag that says which trial a run is, or who logged it (not copied to a record of it)."""
    return key in IDENTITY_TAGS or key in SEARCH_TAGS or key.startswith(("dlbench.factor.", "dlbench.tuning.",
                                                                           PROCESS_TAG))


def _user() -> str:
    """Who runs dlbench (MLflow's ``mlflow.user``): the login name, else the uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name
        return str(os.getuid())


def _process_tag() -> str:
    """The parent run's tag that says this process works on it."""
    return f"{PROCESS_TAG}{socket.gethostname()}.{os.getpid()}"


def study_hash_of(plan: Plan) -> str:
    """One hash for a study invocation's set of trials and searches: the same file re-run has the same one."""
    names = [t.config_hash for t in plan.trials] + [s.id for s in plan.searches]
    return hashlib.sha256("".join(sorted(names)).encode()).hexdigest()
