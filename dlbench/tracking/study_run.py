"""The study run of a :class:`~dlbench.tracking.writer.Tracker`: one parent run shared by every
process working on a study file, and the protocol by which they claim its trials (withdraw a
claim another process made first, adopt a run a dead process left, record a trial from an
identical one's run, leave and end the study run).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag

from dlbench.provenance import code_version, command_line, environment, git_commit
from dlbench.study import Plan, Trial, flatten
from dlbench.study_progress import strip_progress
from dlbench.tracking import store, views
from dlbench.tracking.base import BATCH_LIMIT, StudyContext, TrackerBase, liveness_tags

PROCESS_TAG = "dlbench.process."  # + host.pid: a process working on a study's parent run
PROGRESS_TAG = "dlbench.progress"  # JSON: the progress a process working on the study run published last


class StudyRunClaims(TrackerBase):
    """The parent run of a study and the claims on its trials, for processes started at once on
    one store (under its lock; on a tracking server, the earliest claim wins)."""

    def start_study(self, study_file, plan: Plan, device, context: StudyContext | None = None,
                    resume: bool = False) -> str:
        """Open the parent run of ``plan`` (its trials and searches): the latest one of the same
        study (same trials and searches) when ``resume``,
        so a re-run after a crash continues it and processes started together share it, else a
        new one. A tag ``dlbench.process.<host>.<pid>`` names each process working on it."""
        self._device = device
        self._context = context or StudyContext()
        self.about = About.of(study_file, plan.studies)
        self.level_colors = views.level_colors(plan.trials)
        commit, _ = git_commit(study_file.path.resolve().parent)
        self._commit = commit
        self._source["mlflow.source.name"] = str(study_file.path)
        parent = self._open_parent(study_file, plan, resume)
        views.write_views(self.client, self.experiment_id, parent,  # each study's runs table, one click away
                          {s.name: s.factor_names for s in study_file.studies if s.name in plan.studies})
        return parent

    def _open_parent(self, study_file, plan: Plan, resume: bool) -> str:
        study_hash = study_hash_of(plan)
        with self.lock:  # one parent run for processes started at once: the first creates it, the others join
            previous = store.latest_parent(self.client, self.experiment_id, study_hash) if resume else None
            if previous is not None:
                return self._join(previous)
            self._new_parent(study_file, plan, study_hash)
        if resume and not self.lock.exclusive:  # no lock (a tracking server): the earliest one made at once wins
            made = store.study_runs(self.client, self.experiment_id, study_hash)
            first = min(made, key=lambda r: (r.start_time, r.run_id))
            if first.run_id != self.parent_id:
                self.client.delete_run(self.parent_id)
                return self._join(first)
        return self.parent_id

    def _join(self, previous: store.StoredRun) -> str:
        """Continue the parent run ``previous``: an earlier invocation's, or one another process works on."""
        self.parent_id = previous.run_id
        self.described = strip_progress(previous.tags.get("mlflow.note.content", ""))
        self.client.update_run(self.parent_id, status="RUNNING")
        runs = int(previous.tags.get("dlbench.invocations", "1")) + 1
        self.client.log_batch(self.parent_id, tags=[RunTag("dlbench.invocations", str(runs)),
                                                    RunTag("dlbench.command", command_line()),
                                                    RunTag(_process_tag(), "working")])
        return self.parent_id

    def _new_parent(self, study_file, plan: Plan, study_hash: str) -> str:
        studies = plan.studies
        self.described = self.about.description({})
        tags = {
            "mlflow.runName": study_file.name,
            "mlflow.note.content": self.described,
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
        tags |= self._context.study_tags  # the options that change a trial's bits; a reproduction's name and tags
        run = self.client.create_run(self.experiment_id, run_name=tags["mlflow.runName"], tags=tags)
        self.parent_id = run.info.run_id
        params = {
            "studies": json.dumps(studies, ensure_ascii=False),  # names hold commas
            "num_trials": str(plan.total),
            **{f"baseline.{k}": v for k, v in flatten(study_file.baseline).items()},
        }
        self.client.log_batch(self.parent_id, params=[Param(k, v) for k, v in params.items()])
        self.client.log_text(self.parent_id, study_file.text, Path(study_file.path).name)
        for name, text in self._context.study_artifacts.items():  # the local plugin files, plugins.json
            self.client.log_text(self.parent_id, text, name)
        return self.parent_id

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
        for run in self.study_trials([trial.key]).get(trial.key, []):
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
        names = {t.key for t in trials}
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
        run_id = self.open_run(trial, {store.SAME_AS_TAG: origin, "dlbench.same_as_name": source.title,
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
                "dlbench.previous_status": previous.status, **liveness_tags()}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        histories = store.metric_histories(self.client, run_id, previous.metrics)
        self._logged_steps[run_id] = {k: max(step for step, _ in h) for k, h in histories.items() if h}
        return run_id

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
        for key, host, pid in working_processes(tags):
            if key == _process_tag():
                continue
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

    def describe_results(self) -> None:
        """Rewrite the study run's description with each study's results so far: per level, the
        mean and standard deviation of the finished seeds' test accuracy, to 4 significant digits
        (the UI shows the description on the run's page). Read from the trial runs under the study
        run, whichever process trained them."""
        found = store.child_runs(self.client, self.experiment_id, self.parent_id)
        latest = sorted((runs[0] for runs in found.values()),
                        key=lambda r: int(r.tags.get("dlbench.trial_index", "0") or 0))
        values: dict[str, dict[str, list[float]]] = {}
        for run in latest:
            if run.tags.get("dlbench.role") == "trial" and run.status == "FINISHED" and "test_accuracy" in run.metrics:
                by_level = values.setdefault(run.tags.get("dlbench.study", ""), {})
                by_level.setdefault(run.tags.get("dlbench.level", ""), []).append(run.metrics["test_accuracy"])
        self.described = self.about.description(values)
        note = self._note()
        if self.client.get_run(self.parent_id).data.tags.get("mlflow.note.content") != note:
            self.client.set_tag(self.parent_id, "mlflow.note.content", note)

    def publish_progress(self, progress: dict, line: str) -> None:
        """Publish the study's ``progress`` (:mod:`dlbench.study_progress`) to the study run, in one
        write: the tag ``dlbench.progress`` (JSON) and ``line`` on top of its description."""
        self.progress_line = line
        tags = [RunTag(PROGRESS_TAG, json.dumps(progress)), RunTag("mlflow.note.content", self._note())]
        self.client.log_batch(self.parent_id, tags=tags)

    def _note(self) -> str:
        """The study run's description: the progress line, when one was published, then what
        :class:`About` says (shortened to fit a tag's 8,000 characters)."""
        if not self.progress_line:
            return self.described
        return f"{self.progress_line[:PROGRESS_ROOM - 2]}\n\n{self.described}"  # described leaves it the room


MAX_DESCRIBED_LEVELS = 40  # a study's table in the description stops there
MAX_NOTE = 8000  # characters of a run's tag value, the description included (MLflow's MAX_TAG_VAL_LENGTH)
PROGRESS_ROOM = 400  # of them kept for the progress line on top (``study_progress.progress_line``: ~200)


@dataclass(frozen=True)
class About:
    """What the study run's description says of the study file: its description and each study's question."""

    text: str
    questions: tuple[tuple[str, str], ...]  # (study, question) of each study the run runs, in file order

    @classmethod
    def of(cls, study_file, studies: list[str]) -> About:
        running = set(studies)
        return cls(study_file.description, tuple((s.name, s.question) for s in study_file.studies if s.name in running))

    def description(self, values: dict[str, dict[str, list[float]]]) -> str:
        """Markdown: the file's description, then each study's question and, once some of its trials
        finished, a table of its levels' test accuracy (``values``: study -> level -> the seeds'
        values); the tables shortened as needed to fit in a run's tag (MLflow's 8,000 characters)
        with the progress line a running study puts on top."""
        for rows in (MAX_DESCRIBED_LEVELS, 10, 0):
            parts = [self.text] if self.text else []
            for study, question in self.questions:
                parts.append(f"**{study}**" + (f": {question}" if question else ""))
                if values.get(study):
                    parts.append(level_table(values[study], rows))
            text = "\n\n".join(parts)
            if len(text) <= MAX_NOTE - PROGRESS_ROOM:
                return text
        return text[:MAX_NOTE - PROGRESS_ROOM - 1] + "…"


def level_table(by_level: dict[str, list[float]], most: int = MAX_DESCRIBED_LEVELS) -> str:
    """A Markdown table of each level's mean test accuracy over its seeds, to 4 significant digits:
    the first ``most`` levels, then how many more the report has."""
    rows = ["| level | test accuracy, mean | std | seeds |", "| --- | ---: | ---: | ---: |"] if most else []
    for level, values in list(by_level.items())[:most]:
        mean = float(sum(map(Fraction, values)) / len(values))  # exact, then rounded once
        std = f"{statistics.stdev(values):.4g}" if len(values) > 1 else "–"
        cell = level.replace("|", "\\|")  # a level name may hold the column separator
        rows.append(f"| {cell} | {mean:.4g} | {std} | {len(values)} |")
    if (left := len(by_level) - most) > 0:
        more = f"{left} {'more ' if most else ''}level{'s' if left > 1 else ''}: see the study's report."
        rows.append(f"\n{more}" if rows else more)
    return "\n".join(rows)


SEARCH_TAGS = {"dlbench.search", "dlbench.tuned", "dlbench.tuned_from"}  # the trial's own search, not the source's
IDENTITY_TAGS = {store.TRIAL_TAG, store.SAME_AS_TAG, "dlbench.same_as_name", "dlbench.reused", "dlbench.role",
                 "dlbench.study", "dlbench.level", "dlbench.seed", "dlbench.levels", "dlbench.trial_index",
                 "dlbench.host", "dlbench.pid", "dlbench.heartbeat", "mlflow.runName", "mlflow.parentRunId",
                 "mlflow.note.content", "mlflow.user", "mlflow.source.name", "mlflow.source.type",
                 "dlbench.create_id", "dlbench.replaces", "mlflow.runColor"}


def _identity_tag(key: str) -> bool:
    """A tag that says which trial a run is, or who logged it (not copied to a record of it)."""
    return key in IDENTITY_TAGS or key in SEARCH_TAGS or key.startswith(("dlbench.factor.", "dlbench.tuning.",
                                                                           PROCESS_TAG))


def working_processes(tags: dict[str, str]) -> list[tuple[str, str, str]]:
    """(tag key, host, pid) of each process that says, on a study run's ``tags``, that it works on it."""
    return [(key, *key.removeprefix(PROCESS_TAG).rsplit(".", 1)) for key in tags if key.startswith(PROCESS_TAG)]


def _process_tag() -> str:
    """The parent run's tag that says this process works on it."""
    return f"{PROCESS_TAG}{socket.gethostname()}.{os.getpid()}"


def study_hash_of(plan: Plan) -> str:
    """One hash for a study invocation's set of trials and searches: the same file re-run has the same one."""
    names = [t.config_hash for t in plan.trials] + [s.id for s in plan.searches]
    return hashlib.sha256("".join(sorted(names)).encode()).hexdigest()
