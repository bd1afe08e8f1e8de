"""Run a study: the units of work planned, claimed and trained in a pool, tracked, reported.

:func:`run_study` is the run of one study file's trials from a parsed file and its plugins:
the pool it trains in (``execution/``), the protocol that gives every trial exactly one run
(``claims.py``), the MLflow study run (``tracking/``) and the reports drawn as studies end
(``background_reports.py``). :func:`dlbench.session.run_file` is the whole command around it.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

from dlbench.background_reports import BackgroundReports
from dlbench.claims import (Announcer, StudyRun, claim, ended_elsewhere, plan_works, record_identical,
                            stored_result)
from dlbench.config import StudyFile
from dlbench.datastore import check_data
from dlbench.determinism import set_determinism
from dlbench.execution import InlinePool, Pool, WorkQueue, checkpoint_path, hand_out_order, resolve_devices
from dlbench.execution import start_workers
from dlbench.planning import Work, plan, stack_settings, unit_cost
from dlbench.plugins import Plugins
from dlbench.progress import StudyView
from dlbench.provenance import code_version, git_diff, installed_packages, option_tags, plugin_artifacts
from dlbench.settings import RunOptions
from dlbench.study import Plan, first_of_each_config
from dlbench.study_progress import ProgressPublisher
from dlbench.trial import Trial

__all__ = ["StudyRun", "run_study"]


def run_study(study_file: StudyFile, trials: list[Trial], plugins: Plugins, options: RunOptions,
              stream: TextIO = sys.stdout, pool: Pool | None = None, searches=(), sizes=None) -> StudyRun:
    """Run the trials not already in the store; resume those a dead process left behind.

    Every (study, level, seed) of the file ends with exactly one run under the study run (the
    parent run, continued by a re-run of the same file unless ``options.force``), whatever happened:
    a trial whose run there finished (or diverged) is skipped, one left RUNNING by a dead process
    (or KILLED) continues in its own run from its last epoch checkpoint, a failed one trains
    again in a new run (the failed one deleted). Identical trials (equal config hash) train
    once, as the first of them; the others are recorded from its run under their own study
    (``dlbench.same_as``). A trial whose configuration finished in an earlier study run of the
    experiment is recorded from that run the same way, and said so, unless ``options.force``.

    Processes started at once on one store share the work: one parent run (the first creates
    it, the others join it), each trial claimed by one process at dispatch (``claim``), a
    trial another live process runs left to it; the last process to leave ends the parent run.

    Trials that can share a training loop train stacked (at most ``options.stack_size``
    together; default by device, 1: never). The units of work train in ``pool`` (a
    :class:`dlbench.execution.Pool`, started before the preflight: Ray tasks, or worker
    processes), else in worker processes over ``options.device``'s devices, or in this process
    (``options.jobs`` 1). A tracking server that goes away is waited for
    ``options.tracking_timeout`` seconds (None: 600), training going on meanwhile
    (``tracking/resilient.py``).

    ``searches`` (:func:`dlbench.study.expand_plan`) add the trials of tuned levels as they go:
    rounds of tuning trials, then the best values with the study's seeds. A re-run asks the
    same points again (the samplers are seeded), finds the trials already in the store and
    spends only what is left of each budget.

    ``options.cuda_graphs`` (auto, on, off): a stack's training steps replay from CUDA graphs on
    a GPU (``step_graph.py``).

    ``sizes`` (the preflight's parameter count of each config, by group hash) feed the planner's
    cost model of the ETA the run shows and publishes.
    """
    devices = [pool.device] if pool is not None and pool.device is not None else resolve_devices(options.device)
    device = devices[0]  # a Ray cluster's tasks train on GPUs when it has some (--device auto)
    set_determinism(options.deterministic, device)
    # a trial with no partner on a GPU: a stack of one, to replay its steps from CUDA graphs
    max_stack, graphs = stack_settings(device, options.stack_size, options.cuda_graphs)
    stacks = partial(plan, registry=plugins.registry, max_size=max_stack, graphs=graphs)
    if pool is None:  # workers start first: they import torch and load plugins and data while this process opens the store
        pool = start_workers(trials, plugins, devices, options, searches) or InlinePool(plugins, device, options)
    from dlbench.tracking.lock import store_lock  # imports mlflow: after the workers forked
    from dlbench.tracking.relocate import require_in_place

    try:
        # a store copied or moved as a folder: its new runs' artifacts would go to the old one's
        require_in_place(options.tracking_uri, "dlbench run")
        with ExitStack() as startup:
            # One process at a time opens the store, joins (or creates) the study's parent run and
            # claims its first units; the execution closes ``startup`` then. The one that finds no
            # store creates it: nothing can be skipped, resumed or taken by another process yet, so
            # its workers train at once while it creates the store (seconds).
            lock = startup.enter_context(store_lock(options.tracking_uri))
            early: list[Work] = []
            data_in_place = options.data_dir is None or Path(options.data_dir).is_dir()  # else the data check writes it
            if not pool.in_process and data_in_place and (options.force or _fresh_store(options.tracking_uri)):
                same = first_of_each_config(trials)
                units = hand_out_order(stacks([t for t in trials if t.index not in same]))
                for work in units:
                    checkpoint_path(options.checkpoint_dir, work).unlink(missing_ok=True)
                early = pool.prestart(units)
            execution = StudyExecution(study_file, Plan(list(trials), list(searches), dict(sizes or {})), plugins,
                                       options, stream, pool, device, stacks)
            return execution.run(lock, startup, early)
    finally:
        pool.close(now=True)


def study_totals(plan: Plan) -> dict[str, int]:
    """Each study's number of trials: those known now and those its searches will add."""
    totals = Counter(t.study for t in plan.trials)
    for search in plan.searches:
        totals[search.study.name] += search.total
    return {study: totals[study] for study in plan.studies}


def _fresh_store(tracking_uri: str) -> bool:
    """A SQLite store whose file does not exist yet: it holds no runs to skip or resume."""
    if not tracking_uri.startswith("sqlite:///"):
        return False
    return not Path(tracking_uri.removeprefix("sqlite:///")).exists()


@dataclass
class StudyExecution:
    """One process's part of a study run: what it trains, records and reports, and the tally."""

    study_file: StudyFile
    plan: Plan
    plugins: Plugins
    options: RunOptions
    stream: TextIO
    pool: Pool
    device: object
    stacks: object  # trials -> units of work (``planning.plan`` with this run's settings)
    pending: Counter = field(default_factory=Counter)  # trials of each study not ended yet in this process
    drawn: list[str] = field(default_factory=list)  # the studies whose report this process draws

    def run(self, lock, startup: ExitStack, early: list[Work]) -> StudyRun:
        from dlbench.tracking import StudyContext, Tracker  # mlflow is heavy: imported only when a study runs

        options, stream, trials, searches = self.options, self.stream, self.plan.trials, self.plan.searches
        context = self._context(StudyContext)
        self.started_ms = int(time.time() * 1000)
        tracker = self.tracker = Tracker(options.tracking_uri, self.study_file.name, lock=lock,
                                         timeout_s=options.tracking_timeout)
        total = self.plan.total
        # the study run shows the progress, for `dlbench status` and the UI
        self.live = ProgressPublisher(study_totals(self.plan), self.pool.jobs, self.published,
                                      cost=partial(unit_cost, sizes=self.plan.sizes))
        # and so does the terminal: a live view (or plain lines in a log), every other line above it
        self.view = StudyView(total, self.live.snapshot, stream, self.pool.jobs, searches)
        self.stream = stream = self.view.lines
        self.say = Announcer(stream, total)
        run = self.result = StudyRun(tracker.start_study(self.study_file, self.plan, self.device, context,
                                                         resume=not options.force), total=total,
                                          studies=self.plan.studies)
        workers = f" {self.pool.description}" if self.pool.description else ""
        tuned = f" ({sum(s.spec.budget for s in searches)} of them tuning {len(searches)} levels)" if searches else ""
        stream.write(f"study {self.study_file.name!r}: {total} trials{tuned} on {self.device}{workers}; "
                     f"MLflow parent run {run.parent_run_id} in {options.tracking_uri}\n")
        same = first_of_each_config(trials)  # identical trials: the first trains, the others record its run
        works, self.waiting = plan_works(trials, same, tracker, run, self.stacks, options.force,
                                         options.checkpoint_dir, self.say)
        for work in early:  # training already: new by construction (this process created the store, or --force)
            for trial in work.members:
                tracker.open_run(trial)
        startup.close()  # the store lock: other processes may now join and claim
        self.known = list(trials)  # and the trials the searches add as they go
        self.reports = BackgroundReports(options.tracking_uri, run.parent_run_id, self.known, options.reports_dir,
                                         background=not self.pool.in_process, busy_cores=self.pool.jobs)
        self.pending = Counter(t.study for w in works for t in w.members) + Counter(
            t.study for ts in self.waiting.values() for t in ts)
        for search in searches:
            self.pending[search.study.name] += search.total
        self.queue = WorkQueue(hand_out_order([w for w in works if w not in early]), self.stacks, searches,
                               on_new=self.known.extend, on_empty=self.no_finals)
        self.live.planned(works, run.results, [t for ts in self.waiting.values() for t in ts])
        status = "KILLED"
        self.view.start()
        try:
            for study in dict.fromkeys(t.study for t in trials):
                if not self.pending[study]:
                    self.settle(study)  # every trial already in the store, or in another process's hands
            self.pool.run(self.queue, [tracker, self.view, self.live], self.on_result, self.take,
                          stop=lambda: options.fail_fast and run.count("failed") > 0)
            status = "FINISHED"
        except BaseException:
            self.reports.close()
            raise
        finally:
            self.view.stop()
            self._leave(status)
        return self._report()

    def _context(self, make_context):
        """The study run's provenance: determinism, the data checked against data.dvc, the
        installed packages, the code's commit (and its uncommitted diff); on the study run itself
        the options that change a trial's bits and the local plugin files (what
        ``dlbench reproduce --study`` re-runs it with), and ``options.study_tags``."""
        options, folder = self.options, self.study_file.path.resolve().parent
        context = make_context(tags={"dlbench.deterministic": str(options.deterministic).lower()},
                               registry=self.plugins.registry)
        context.study_tags |= option_tags(options, self.pool.jobs) | dict(options.study_tags)
        context.study_artifacts |= plugin_artifacts(self.plugins)
        if options.data_dir is not None:
            context.tags |= check_data(options.data_dir, self.plugins.registry,
                                       allow_mismatch=options.allow_data_mismatch, stream=self.stream)
        context.artifacts["requirements.txt"] = installed_packages()
        code = code_version(folder)  # the commit, or why there is none
        context.tags |= code.tags()
        if code.dirty:
            context.artifacts["git.diff"] = git_diff(folder)
        return context

    def settle(self, study: str) -> None:
        """This process has nothing left of ``study``: its report builds while the others train,
        unless another process still trains some of its trials (that one draws it when done)."""
        tracker = self.tracker
        tracker.flush()
        others = tracker.running_elsewhere([t for t in self.plan.trials if t.study == study])
        if others:
            self.stream.write(f"study {study!r}: process {others[0].tags.get('dlbench.pid', '?')} still trains "
                              f"{len(others)} of its trials and draws its report\n")
            return
        tracker.describe_results()  # the study run's description: each level's results so far
        self.drawn.append(study)
        self.reports.submit(study)

    def _ended(self, study: str) -> None:
        self.pending[study] -= 1
        if self.pending[study] == 0:
            self.settle(study)

    def on_result(self, trial: Trial, result) -> None:
        run = self.result
        run.results.append((trial, result))
        self.live.ended(trial, result)
        self.queue.record(trial, result)  # a search may have its next round now
        self._ended(trial.study)
        twins = self.waiting.pop(trial.index, [])
        if twins and result.status != "interrupted":  # an interrupted one resumes, its twins then
            for twin in twins:
                action, recorded = record_identical(twin, trial, self.tracker, self.say)
                if action == "busy":
                    if recorded is not None:  # another process records it
                        self.gone_elsewhere(twin)
                    continue
                run.by_others += action == "skip"
                run.shared += action == "recorded"
                self.on_result(twin, stored_result(recorded))

    def published(self, progress: dict, line: str) -> None:
        """The study's progress, as the publisher gives it: to the study run, and to the terminal."""
        self.tracker.publish_progress(progress, line)
        self.view.show(progress)

    def gone_elsewhere(self, trial: Trial) -> None:
        """Another live process trains ``trial`` (and so records its twins)."""
        for t in [trial, *self.waiting.pop(trial.index, [])]:
            self.live.elsewhere(t)
            self.result.elsewhere.append(t)
            self.queue.elsewhere(t)
            self._ended(t.study)

    def no_finals(self, search) -> None:
        self.stream.write(f"study {search.study.name!r}, level {search.level!r}: no tuning trial of the last stage "
                          "finished (all failed, diverged or were pruned): nothing to train with the study's seeds\n")
        self.result.not_tuned += len(search.study.seeds)
        self.live.never(len(search.study.seeds))
        self.pending[search.study.name] -= len(search.study.seeds)
        if self.pending[search.study.name] == 0:
            self.settle(search.study.name)

    def take(self, work: Work) -> Work | None:
        """Claim ``work`` as it is handed out; what another process took or finished meanwhile is not ours."""
        run, tracker = self.result, self.tracker
        unit, taken = claim(work, tracker, self.options.force, self.options.checkpoint_dir, self.say)
        self.live.taken(work, unit)
        for trial, action, previous in taken:
            if action == "busy":
                self.gone_elsewhere(trial)
            elif action == "reused":
                run.reused += 1
                self.on_result(trial, stored_result(previous, tracker if trial.is_tuning else None))
            else:
                if previous.start_time < self.started_ms:  # an earlier invocation's (a search's trial is planned late)
                    run.skipped += 1
                    run.skipped_finished += previous.status == "FINISHED"
                else:
                    run.by_others += 1
                self.on_result(trial, stored_result(previous, tracker if trial.is_tuning else None))
        return unit

    def _leave(self, status: str) -> None:
        """Leave the study run; the last process out ends it, with the summary of the whole study."""
        run, tracker = self.result, self.tracker
        with tracker.lock:
            last = tracker.leave_study(stopping=status == "KILLED")
            ended_elsewhere(run, tracker)  # the last one out sees every trial ended
            if status == "FINISHED" and run.count("failed"):
                status = "FAILED"
            elif status == "FINISHED" and run.count("interrupted"):  # a worker died: resumable, as after Ctrl-C
                status = "KILLED"
            if last:
                summary = {s: run.count(s) for s in ("finished", "pruned", "diverged", "failed", "interrupted")}
                summary["skipped"] = run.skipped
                summary["recorded_from_identical"] = run.shared
                summary["reused"] = run.reused
                summary["by_other_processes"] = run.by_others
                summary["running_elsewhere"] = run.busy
                summary["not_run"] = run.total - len(run.results) - run.busy
                tracker.end_study(status, summary)

    def _report(self) -> StudyRun:
        """The reports of the studies this process drew, once training is over."""
        run = self.result
        self.pool.close()  # idle now: free the cores for the reports
        self.reports.training_done()
        studies = self.plan.studies
        for study in studies:
            if self.pending[study] > 0 and any(t.study == study for t, _ in run.results):
                self.settle(study)  # not all of it ran (--fail-fast, an interrupted search): a report of what did
        if self.drawn:
            run.reports = self.reports.wait([s for s in studies if s in self.drawn], self.stream)
        else:
            self.reports.close(now=False)
        return run
