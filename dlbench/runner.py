"""Run a study file: expand, plan the units of work (stacks), train them, track, report.

The executor for one machine: units run one after another in this process (``--jobs 1``; the
dataset is built once and stays on the device), or in worker processes over the machine's cores
or GPUs (``workers.py``), with this process the one writer to the tracking store.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import torch

from dlbench.background_reports import BackgroundReports
from dlbench.config import StudyFile
from dlbench.datacache import DataCache
from dlbench.determinism import set_determinism
from dlbench.diagnostics import Diagnostics
from dlbench.errors import UserError
from dlbench.executor import checkpoint_path, execute
from dlbench.plugins import Plugins
from dlbench.progress import Progress
from dlbench.provenance import code_version, git_diff, installed_packages
from dlbench.stacking import Work, plan, stack_id, stack_settings
from dlbench.study import Plan, Trial, canonical_json, first_of_each_config
from dlbench.train import TrialResult
from dlbench.work_queue import WorkQueue, hand_out_order
from dlbench.workers import WorkerPool, WorkerSetup, cpu_cores, default_jobs


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks the first GPU when there is one; ``cpu``, ``cuda`` and ``cuda:N`` are checked."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: this machine has no usable CUDA GPU (torch {torch.__version__}, "
                            f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) here (cuda:0 to "
                            f"cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise UserError(f"--device {spec!r}: unsupported; use auto, cpu, cuda or cuda:N")
    return device


def resolve_devices(spec: str) -> list[torch.device]:
    """The devices a study runs on: ``auto`` and ``cuda`` mean every visible GPU (or the CPU
    for ``auto`` when there is none); ``cuda:N`` and ``cpu`` name one."""
    device = resolve_device(spec)
    if spec in ("auto", "cuda") and device.type == "cuda":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [device]


@dataclass
class RaySettings:
    """``--executor ray``: the cluster (None: a new local one of this machine's cores), what each
    unit of work asks for (``{"cpu": 1, "gpu": 0.5}``), the device spec (auto, cpu, cuda) and how
    many times Ray runs a task again when its worker dies."""

    address: str | None = None
    resources: dict[str, float] = field(default_factory=dict)
    device: str = "auto"
    max_retries: int = 3


@dataclass
class StudyRun:
    parent_run_id: str
    results: list[tuple[Trial, TrialResult]] = field(default_factory=list)  # skipped ones included
    reports: list[Path] = field(default_factory=list)
    skipped: int = 0  # already finished (or diverged) in the store when this process planned the study
    skipped_finished: int = 0  # of those, the finished ones
    by_others: int = 0  # ended by other processes working on the study at the same time
    total: int = 0  # trials of the invocation, the searches' included
    not_tuned: int = 0  # final trials of searches that found no finished trial to train
    shared: int = 0  # recorded from an identical trial of the file (equal config hash), trained once
    reused: int = 0  # recorded from an earlier study run of the experiment (equal config hash)
    elsewhere: list[Trial] = field(default_factory=list)  # being run by another live process

    @property
    def busy(self) -> int:
        return len(self.elsewhere)

    def count(self, status: str) -> int:
        return sum(r.status == status for _, r in self.results)


def plan_trial(previous: list):
    """What to do with a trial given its runs under the study run (newest first):
    ``("new", None)`` when it has none, ``("skip", run)`` when it finished or diverged,
    ``("busy", run)`` when a live process runs it, ``("resume", run)`` when it was left RUNNING
    by a dead process or KILLED, ``("retry", run)`` when it failed (or a record of an identical
    trial was left half-written): it trains (or is recorded) again in a new run, the failed ones
    deleted, so that it keeps one run."""
    if not previous:
        return "new", None
    for run in previous:
        if run.ended:
            return "skip", run
    newest = previous[0]
    if newest.status == "RUNNING" and newest.process_alive():
        return "busy", newest
    if newest.is_record:
        return "retry", newest
    if newest.status in ("RUNNING", "KILLED"):
        return "resume", newest
    return "retry", newest


def stored_result(run, tracker=None) -> TrialResult:
    """A finished trial's result as the store has it (its latest metric values; with
    ``tracker``, its per-epoch history too: a tuning trial's search needs its curve)."""
    status = run.tags.get("dlbench.status", "finished")
    history = tracker.epoch_history(run) if tracker is not None else []
    return TrialResult(status=status, epochs_run=int(run.tags.get("dlbench.epochs_run", "0")),
                       final={k: v for k, v in run.metrics.items() if "." not in k}, history=history,
                       seconds=float(run.tags.get("dlbench.duration_s", "0")))


def run_study(study_file: StudyFile, trials: list[Trial], plugins: Plugins, *, device: torch.device,
              tracking_uri: str, reports_dir: Path, stream: TextIO, fail_fast: bool = False,
              force: bool = False, deterministic: bool = True, data_dir: Path | None = None,
              checkpoint_dir: Path = Path(".dlbench/checkpoints"), checkpoint_every: float = 10.0,
              allow_data_mismatch: bool = False, jobs: int | None = None, stack_size: int | None = None,
              devices: list[torch.device] | None = None, tracking_timeout: float | None = None,
              ray_pool=None, workers=None, searches=(), cuda_graphs: str = "auto") -> StudyRun:
    """Run the trials not already in the store; resume those a dead process left behind.

    Every (study, level, seed) of the file ends with exactly one run under the study run (the
    parent run, continued by a re-run of the same file unless ``force``), whatever happened:
    a trial whose run there finished (or diverged) is skipped, one left RUNNING by a dead process
    (or KILLED) continues in its own run from its last epoch checkpoint, a failed one trains
    again in a new run (the failed one deleted). Identical trials (equal config hash) train
    once, as the first of them; the others are recorded from its run under their own study
    (``dlbench.same_as``). A trial whose configuration finished in an earlier study run of the
    experiment is recorded from that run the same way, and said so, unless ``force``.

    Processes started at once on one store share the work: one parent run (the first creates
    it, the others join it), each trial claimed by one process at dispatch (``claim``), a
    trial another live process runs left to it; the last process to leave ends the parent run.

    Trials that can share a training loop train stacked (at most ``stack_size`` together;
    default by device, 1: never); the units of work run in this process (``jobs`` 1) or in
    ``jobs`` worker processes over ``devices`` (default: ``device`` alone); ``None``: as many as
    the machine has room for. With ``ray_pool`` (:func:`start_ray`), they run as Ray tasks
    instead, on the pool's device; with ``workers`` (:func:`start_workers`, started before the
    preflight), in those worker processes. A tracking server that goes away is waited for ``tracking_timeout``
    seconds (None: 600), training going on meanwhile (``tracking/resilient.py``).

    ``searches`` (:func:`dlbench.study.expand_plan`) add the trials of tuned levels as they go:
    rounds of tuning trials, then the best values with the study's seeds. A re-run asks the
    same points again (the samplers are seeded), finds the trials already in the store and
    spends only what is left of each budget.

    ``cuda_graphs`` (auto, on, off): a stack's training steps replay from CUDA graphs on a GPU
    (``step_graph.py``; a Ray pool has its own setting, from :func:`start_ray`).
    """
    pool = ray_pool or workers
    if ray_pool is not None:  # the cluster's tasks train on GPUs when it has some (--device auto)
        device = pool.device
    set_determinism(deterministic, device)
    # a trial with no partner on a GPU: a stack of one, to replay its steps from CUDA graphs
    max_stack, graphs = stack_settings(device, stack_size, cuda_graphs)
    stacks = partial(plan, registry=plugins.registry, max_size=max_stack, graphs=graphs)
    devices = devices or [device]
    if pool is None:  # workers start first: they import torch and load plugins and data while this process opens the store
        pool = start_workers(trials, plugins, devices, jobs=jobs, fail_fast=fail_fast, stack_size=stack_size,
                             searches=searches, data_dir=data_dir, deterministic=deterministic,
                             checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, cuda_graphs=cuda_graphs)
    from dlbench.tracking.lock import store_lock  # imports mlflow: after the workers forked

    try:
        with ExitStack() as startup:
            # One process at a time opens the store, joins (or creates) the study's parent run and
            # claims its first units; _run closes ``startup`` then. The one that finds no store
            # creates it: nothing can be skipped, resumed or taken by another process yet, so its
            # workers train at once while it creates the store (seconds).
            lock = startup.enter_context(store_lock(tracking_uri))
            early: list[Work] = []
            data_in_place = data_dir is None or Path(data_dir).is_dir()  # else the data check writes it first
            if pool is not None and data_in_place and (force or _fresh_store(tracking_uri)):
                same = first_of_each_config(trials)
                units = hand_out_order(stacks([t for t in trials if t.index not in same]))
                for work in units:
                    checkpoint_path(checkpoint_dir, work).unlink(missing_ok=True)
                early = pool.prestart(units)
            return _run(study_file, trials, plugins, device, tracking_uri, reports_dir, stream, fail_fast, force,
                        deterministic, data_dir, checkpoint_dir, checkpoint_every, allow_data_mismatch, stacks,
                        pool, lock, startup, early, tracking_timeout, list(searches), cuda_graphs)
    finally:
        if pool is not None:
            pool.close(now=True)


def _fresh_store(tracking_uri: str) -> bool:
    """A SQLite store whose file does not exist yet: it holds no runs to skip or resume."""
    if not tracking_uri.startswith("sqlite:///"):
        return False
    return not Path(tracking_uri.removeprefix("sqlite:///")).exists()


def _worker_setup(plugins, data_dir, deterministic, checkpoint_dir, checkpoint_every, threads: int,
                  cuda_graphs: str = "auto"):
    """What a worker needs to rebuild this process's world; absolute paths (a Ray worker does
    not start in this directory)."""
    def absolute(path) -> str | None:
        return str(Path(path).resolve()) if path else None

    return WorkerSetup(plugins_dir=absolute(plugins.plugins_dir), plugins_dir_required=plugins.required_dir,
                       autoload=plugins.autoload, data_dir=absolute(data_dir), deterministic=deterministic,
                       threads=threads, checkpoint_dir=absolute(checkpoint_dir), checkpoint_every=checkpoint_every,
                       cuda_graphs=cuda_graphs)


def start_workers(trials: list[Trial], plugins: Plugins, devices: list[torch.device], *, jobs: int | None,
                  fail_fast: bool = False, stack_size: int | None = None, searches=(), data_dir: Path | None = None,
                  deterministic: bool = True, checkpoint_dir: Path = Path(".dlbench/checkpoints"),
                  checkpoint_every: float = 10.0, cuda_graphs: str = "auto"):
    """The local worker processes for a run of ``trials`` on ``devices`` (``jobs`` None: as many as
    the machine has room for), or None when the units train in this process (one job). They
    start at once and warm up (``workers.warm_up``: imports, CUDA, the datasets when ``data_dir``
    holds them already) while this process goes on. Pass the pool to :func:`run_study`."""
    if jobs is None:  # --fail-fast stops at the first failure in file order: one unit at a time
        max_stack, _ = stack_settings(devices[0], stack_size, cuda_graphs)
        units = len(plan(trials, plugins.registry, max_stack)) + sum(s.spec.budget for s in searches)
        jobs = 1 if fail_fast else default_jobs(devices[0], units, len(devices))
    if jobs <= 1:
        return None
    threads = max(1, cpu_cores() // jobs) if devices[0].type == "cpu" else 1
    setup = _worker_setup(plugins, data_dir, deterministic, checkpoint_dir, checkpoint_every, threads, cuda_graphs)
    in_place = data_dir is None or Path(data_dir).is_dir()  # else the parent's data check writes it first
    return WorkerPool(jobs, [str(d) for d in devices], setup, warm=_data_configs(trials) if in_place else [])


def _data_configs(trials: list[Trial]) -> list[dict]:
    """One trial config for each distinct dataset (with its split and preprocessing) of ``trials``."""
    by_data = {}
    for trial in trials:
        cfg = trial.config
        key = canonical_json({k: cfg.get(k) for k in ("dataset", "val_fraction", "preprocessing")})
        by_data.setdefault(key, cfg)
    return list(by_data.values())


def start_ray(settings: RaySettings, plugins: Plugins, trials: list[Trial], *, data_dir: Path | None,
              deterministic: bool = True, checkpoint_dir: Path = Path(".dlbench/checkpoints"),
              checkpoint_every: float = 10.0, jobs: int | None = None, fail_fast: bool = False,
              cuda_graphs: str = "auto"):
    """Join (or start) the Ray cluster and send each of its slots a warm-up task: its worker
    processes import dlbench and load the plugins and the data while this process goes on (the
    preflight, the tracking store). Returns the pool for :func:`run_study`; close it when done."""
    try:
        from dlbench.ray_executor import ray_pool
    except ImportError as exc:
        raise UserError(f"--executor ray needs Ray, which is not installed here ({exc}). Install it with "
                        "`pip install 'dlbench[ray]'` (on every machine of the cluster), or leave --executor out "
                        "to run on this machine's cores and GPUs.") from None
    setup = _worker_setup(plugins, data_dir, deterministic, checkpoint_dir, checkpoint_every,
                          threads=max(1, int(settings.resources.get("cpu", 1))), cuda_graphs=cuda_graphs)
    # --fail-fast stops at the first failure in file order: one unit at a time
    pool = ray_pool(settings.address, setup, settings.resources, settings.device, 1 if fail_fast else jobs,
                    settings.max_retries)
    pool.warm(_data_configs(trials))
    return pool


def _run(study_file, trials, plugins, device, tracking_uri, reports_dir, stream, fail_fast, force, deterministic,
         data_dir, checkpoint_dir, checkpoint_every, allow_data_mismatch, stacks, pool, lock, startup,
         early, tracking_timeout, searches, cuda_graphs) -> StudyRun:
    from dlbench.tracking import StudyContext, Tracker  # mlflow is heavy: imported only when a study runs

    context = StudyContext(tags={"dlbench.deterministic": str(deterministic).lower()}, registry=plugins.registry)
    if data_dir is not None:
        from dlbench.datastore import check_data

        context.tags |= check_data(data_dir, plugins.registry, allow_mismatch=allow_data_mismatch, stream=stream)
    context.artifacts["requirements.txt"] = installed_packages()
    code = code_version(study_file.path.resolve().parent)  # the commit, or why there is none
    context.tags |= code.tags()
    if code.dirty:
        context.artifacts["git.diff"] = git_diff(study_file.path.resolve().parent)

    started_ms = int(time.time() * 1000)
    tracker = Tracker(tracking_uri, study_file.name, lock=lock, timeout_s=tracking_timeout)
    plan = Plan(list(trials), searches)
    total = plan.total
    progress = Progress(total, stream)
    run = StudyRun(tracker.start_study(study_file, plan, device, context, resume=not force), total=total)
    workers = f" {pool.description}" if pool else ""
    tuned = f" ({sum(s.spec.budget for s in searches)} of them tuning {len(searches)} levels)" if searches else ""
    stream.write(f"study {study_file.name!r}: {total} trials{tuned} on {device}{workers}; "
                 f"MLflow parent run {run.parent_run_id} in {tracking_uri}\n")
    same = first_of_each_config(trials)  # identical trials: the first trains, the others record its run
    works, waiting = _works(trials, same, tracker, run, stacks, force, checkpoint_dir, stream, total)
    for work in early:  # training already: new by construction (this process created the store, or --force)
        for trial in work.members:
            tracker.open_run(trial)
    startup.close()  # the store lock: other processes may now join and claim
    known = list(trials)  # and the trials the searches add as they go
    reports = BackgroundReports(tracking_uri, run.parent_run_id, known, reports_dir, background=pool is not None,
                                busy_cores=pool.jobs if pool is not None else 1)
    pending = Counter(t.study for w in works for t in w.members) + Counter(t.study for ts in waiting.values() for t in ts)
    for search in searches:
        pending[search.study.name] += search.total
    drawn: list[str] = []  # the studies whose report this process draws

    def settle(study: str) -> None:
        """This process has nothing left of ``study``: its report builds while the others train,
        unless another process still trains some of its trials (that one draws it when done)."""
        tracker.flush()
        others = tracker.running_elsewhere([t for t in trials if t.study == study])
        if others:
            stream.write(f"study {study!r}: process {others[0].tags.get('dlbench.pid', '?')} still trains "
                         f"{len(others)} of its trials and draws its report\n")
            return
        tracker.log_level_summary(study, [t for t in known if t.study == study and not t.is_tuning])  # parent run
        drawn.append(study)
        reports.submit(study)

    def on_result(trial, result):
        run.results.append((trial, result))
        queue.record(trial, result)  # a search may have its next round now
        pending[trial.study] -= 1
        if pending[trial.study] == 0:
            settle(trial.study)
        twins = waiting.pop(trial.index, [])
        if twins and result.status != "interrupted":  # an interrupted one resumes, its twins then
            for twin in twins:
                action, recorded = record_identical(twin, trial, tracker, stream, total)
                if action == "busy":
                    if recorded is not None:  # another process records it
                        gone_elsewhere(twin)
                    continue
                run.by_others += action == "skip"
                run.shared += action == "recorded"
                on_result(twin, stored_result(recorded))

    def gone_elsewhere(trial) -> None:
        """Another live process trains ``trial`` (and so records its twins)."""
        for t in [trial, *waiting.pop(trial.index, [])]:
            run.elsewhere.append(t)
            queue.elsewhere(t)
            pending[t.study] -= 1
            if pending[t.study] == 0:
                settle(t.study)

    def no_finals(search) -> None:
        stream.write(f"study {search.study.name!r}, level {search.level!r}: no tuning trial of the last stage "
                     "finished (all failed, diverged or were pruned): nothing to train with the study's seeds\n")
        run.not_tuned += len(search.study.seeds)
        pending[search.study.name] -= len(search.study.seeds)
        if pending[search.study.name] == 0:
            settle(search.study.name)

    def take(work: Work) -> Work | None:
        """Claim ``work`` as it is handed out; what another process took or finished meanwhile is not ours."""
        unit, taken = claim(work, tracker, force, checkpoint_dir, stream, total)
        for trial, action, previous in taken:
            if action == "busy":
                gone_elsewhere(trial)
            elif action == "reused":
                run.reused += 1
                on_result(trial, stored_result(previous, tracker if trial.is_tuning else None))
            else:
                if previous.start_time < started_ms:  # an earlier invocation's (a search's trial is planned late)
                    run.skipped += 1
                    run.skipped_finished += previous.status == "FINISHED"
                else:
                    run.by_others += 1
                on_result(trial, stored_result(previous, tracker if trial.is_tuning else None))
        return unit

    queue = WorkQueue(hand_out_order([w for w in works if w not in early]), stacks, searches,
                      on_new=known.extend, on_empty=no_finals)

    status = "KILLED"
    try:
        for study in dict.fromkeys(t.study for t in trials):
            if not pending[study]:
                settle(study)  # every trial already in the store, or in another process's hands
        if pool is not None:
            pool.run(queue, [tracker, progress], on_result, take, stop=lambda: fail_fast and run.count("failed") > 0)
        else:
            _run_inline(queue, take, on_result, plugins, tracker, progress, device, data_dir, checkpoint_dir,
                        checkpoint_every, cuda_graphs, stop=lambda: fail_fast and run.count("failed") > 0)
        status = "FINISHED"
    except BaseException:
        reports.close()
        raise
    finally:
        with tracker.lock:
            last = tracker.leave_study(stopping=status == "KILLED")
            _ended_elsewhere(run, tracker)  # the last one out sees every trial ended
            if status == "FINISHED" and run.count("failed"):
                status = "FAILED"
            elif status == "FINISHED" and run.count("interrupted"):  # a worker died: resumable, as after Ctrl-C
                status = "KILLED"
            if last:  # it ends the parent run, with the summary of the whole study
                summary = {s: run.count(s) for s in ("finished", "pruned", "diverged", "failed", "interrupted")}
                summary["skipped"] = run.skipped
                summary["recorded_from_identical"] = run.shared
                summary["reused"] = run.reused
                summary["by_other_processes"] = run.by_others
                summary["running_elsewhere"] = run.busy
                summary["not_run"] = total - len(run.results) - run.busy
                tracker.end_study(status, summary)
    if pool is not None:
        pool.close()  # idle now: free the cores for the reports
    reports.training_done()
    studies = plan.studies
    for study in studies:
        if pending[study] > 0 and any(t.study == study for t, _ in run.results):
            settle(study)  # not all of it ran (--fail-fast, an interrupted search): a report of what did
    if drawn:
        run.reports = reports.wait([s for s in studies if s in drawn], stream)
    else:
        reports.close(now=False)
    return run


def _works(trials, same: dict[int, Trial], tracker, run: StudyRun, stacks, force: bool, checkpoint_dir: Path,
           stream, total: int) -> tuple[list[Work], dict[int, list[Trial]]]:
    """The units of work: trials to resume from a stack's checkpoint (the same members again),
    then every other trial to run, stacked where they can; and the trials waiting for an
    identical one (``same``) to be trained, by its index. Each trial of the study run is looked
    for among the runs under it: one that finished is skipped, one another live process runs is
    left to it. A trial with no run there whose configuration finished in an earlier study run of
    the experiment is recorded from it (unless ``force``). Each unit is claimed as it is handed out."""
    own = tracker.study_trials()
    earlier = {} if force else tracker.existing_trials()
    resumed_stacks: dict[str, list[tuple[int, Trial]]] = {}
    to_plan, reused = [], []
    waiting: dict[int, list[Trial]] = {}
    done: dict[int, object] = {}  # the first of identical trials, ended: index -> its run
    for trial in trials:
        action, previous = plan_trial(own.get(trial.run_name, []))
        if action == "skip":
            run.skipped += 1
            run.skipped_finished += previous.status == "FINISHED"
            run.results.append((trial, stored_result(previous)))
            done[trial.index] = previous
        elif action == "busy":
            run.elsewhere.append(trial)
        if action in ("skip", "busy"):
            _say(stream, trial, total, action, previous)
            continue
        if trial.index in same:  # recorded from its first once that one has ended
            waiting.setdefault(same[trial.index].index, []).append(trial)
            continue
        source = None if action != "new" or trial.is_tuning else _earlier_result(earlier.get(trial.config_hash, []),
                                                                                  tracker.parent_id)
        if source is not None:
            recorded = tracker.record_same(trial, source, reused=True)
            reused.append(source)
            run.reused += 1
            run.results.append((trial, stored_result(recorded)))
            done[trial.index] = recorded
            continue
        sid = previous.tags.get("dlbench.stack_id") if action == "resume" else None
        if sid and (checkpoint_dir / f"stack-{sid}.pt").is_file():
            resumed_stacks.setdefault(sid, []).append((int(previous.tags.get("dlbench.stack_member", 0)), trial))
            continue
        to_plan.append(trial)
    if reused:
        parents = Counter(r.tags.get("mlflow.parentRunId", "?") for r in reused)
        stream.write(f"{len(reused)} trials reused from earlier study runs of experiment {tracker.experiment!r} "
                     f"(the same configuration and seed finished there: "
                     f"{', '.join(f'{n} of run {p}' for p, n in parents.items())}); each is recorded under this "
                     "study run with dlbench.same_as naming the run that trained it. --force trains them again.\n")
    busy = {t.index for t in run.elsewhere}
    for first, twins in list(waiting.items()):
        if first in busy:  # the process training it records them
            for twin in waiting.pop(first):
                run.elsewhere.append(twin)
        elif first in done:
            for twin in waiting.pop(first):
                action, recorded = _record(twin, done[first], tracker, stream, total)
                run.shared += action == "recorded"
                if action == "busy":
                    run.elsewhere.append(twin)
                else:
                    run.results.append((twin, stored_result(recorded)))
    works = [Work(tuple(t for _, t in sorted(members, key=lambda m: m[0])), sid, as_stack=True)
             for sid, members in resumed_stacks.items()]
    return works + stacks(to_plan), waiting


def _earlier_result(runs: list, parent_id: str):
    """The newest run that trained this configuration and ended (finished or diverged) under
    another study run of the experiment, or None."""
    for run in runs:
        if run.ended and run.tags.get("dlbench.role") == "trial" and run.tags.get("mlflow.parentRunId") != parent_id:
            return run
    return None


def record_identical(twin: Trial, first: Trial, tracker, stream, total: int):
    """Record ``twin`` from the run of ``first``, the identical trial of the file that trained
    (just now, or in another process or invocation): see :func:`_record`."""
    tracker.flush()  # its metrics stored before they are read back
    runs = tracker.study_trials([first.run_name]).get(first.run_name, [])
    if first.index in tracker.run_ids:
        runs.insert(0, tracker.stored(tracker.run_ids[first.index]))
    ended = [r for r in runs if r.ended] or [r for r in runs if r.status == "FAILED"]
    if not ended:  # its run is not there to read (a tracking server lost it): the next run records it
        return "busy", None
    return _record(twin, ended[0], tracker, stream, total)


def _record(twin: Trial, source, tracker, stream, total: int):
    """Under the store lock: ``("recorded", run)``, the run made for ``twin`` from ``source``;
    or ``("skip" | "busy", run)`` when another process has recorded it, or is recording it."""
    with tracker.lock:
        previous = tracker.study_trials([twin.run_name]).get(twin.run_name, [])
        action, other = plan_trial(previous)
        if action in ("skip", "busy"):
            _say(stream, twin, total, action, other)
            return action, other
        tracker.retire(previous)  # a half-written record, or a failed one
        made = tracker.record_same(twin, source)
        if not tracker.lock.exclusive and (first := tracker.rival(twin)) is not None:
            tracker.withdraw(twin)
            return ("busy" if first.status == "RUNNING" else "skip"), first
    stream.write(f"[{twin.index}/{total}] {twin.run_name}  {made.tags.get('dlbench.status', 'finished')}: the same "
                 f"configuration and seed as {made.tags.get('dlbench.same_as_name')} (trained once, run "
                 f"{made.tags.get('dlbench.same_as')}); recorded as run {made.run_id}\n")
    return "recorded", made


def claim(work: Work, tracker, force: bool, checkpoint_dir: Path, stream, total: int):
    """Take ``work`` for this process, under the store lock: re-read its members' runs under the
    study run, leave out the members another process has finished or is running since the plan,
    open a run (RUNNING, with this process's pid) for each of the others, or adopt the one a dead
    process left (a failed one is deleted: the trial trains again in a new run). Returns the unit
    to train (None: nothing left of it) and (trial, "skip" or "busy", the other process's run)
    for each member left out."""
    with tracker.lock:
        existing = tracker.study_trials([t.run_name for t in work.members])
        actions = {t.index: plan_trial(existing.get(t.run_name, [])) for t in work.members}
        # a search's trial (planned as it runs) that an earlier study run of the experiment ended
        searched = [t for t in work.members if t.tuning is not None and actions[t.index][0] == "new"]
        earlier = tracker.existing_trials({t.config_hash for t in searched}) if searched and not force else {}
        for trial in searched:
            if (source := _earlier_result(earlier.get(trial.config_hash, []), tracker.parent_id)) is not None:
                actions[trial.index] = ("reused", tracker.record_same(trial, source, reused=True))
        for trial in work.members:
            action, previous = actions[trial.index]
            if action == "resume":
                tracker.adopt(trial, previous)
            elif action in ("new", "retry"):
                failed = existing.get(trial.run_name, [])
                tracker.retire(failed)
                tracker.open_run(trial, {"dlbench.replaces": ",".join(r.run_id for r in failed)} if failed else None)
        if not tracker.lock.exclusive:  # no lock (a tracking server): the earlier claim wins
            for trial in work.members:
                if actions[trial.index][0] in ("new", "retry") and (first := tracker.rival(trial)) is not None:
                    tracker.withdraw(trial)
                    actions[trial.index] = ("busy" if first.status == "RUNNING" else "skip", first)
    taken = [(t, *actions[t.index]) for t in work.members if actions[t.index][0] in ("skip", "busy", "reused")]
    for trial in work.members:
        _say(stream, trial, total, *actions[trial.index])
    mine = tuple(t for t in work.members if actions[t.index][0] in ("new", "retry", "resume"))
    if not mine:
        return None, taken
    unit = work if len(mine) == len(work.members) else Work(mine, stack_id(mine), work.alone_because)
    if not any(actions[t.index][0] == "resume" for t in mine):
        checkpoint_path(checkpoint_dir, unit).unlink(missing_ok=True)  # a stale file must not leak in
    return unit, taken


def _say(stream, trial: Trial, total: int, action: str, previous) -> None:
    """One line for a trial this process does not start afresh."""
    if action in ("skip", "busy"):
        what = "already done" if action == "skip" else "is running in another live process"
        stream.write(f"[{trial.index}/{total}] {trial.run_name}  skipped: run {previous.run_id} {what}\n")
    elif action == "reused":
        stream.write(f"[{trial.index}/{total}] {trial.run_name}  reused: run {previous.tags.get('dlbench.same_as')} of "
                     f"an earlier study run ended the same configuration; recorded as run {previous.run_id} "
                     "(--force trains it again)\n")
    elif action == "resume":
        stream.write(f"[{trial.index}/{total}] {trial.run_name}  resuming run {previous.run_id} "
                     f"(left {previous.status} by process {previous.tags.get('dlbench.pid', '?')})\n")
    elif action == "retry":
        stream.write(f"[{trial.index}/{total}] {trial.run_name}  trains again: run {previous.run_id} "
                     f"{previous.status.lower()} (deleted in MLflow, kept among its deleted runs)\n")


def _ended_elsewhere(run: StudyRun, tracker) -> None:
    """The trials other processes were running: those they have ended since count as results
    of this study run (as the store has them); those still running stay theirs."""
    if not run.elsewhere:
        return
    found = tracker.study_trials([t.run_name for t in run.elsewhere])
    still = []
    for trial in run.elsewhere:
        previous = found.get(trial.run_name, [])
        action, done = plan_trial(previous)
        if action == "busy":
            still.append(trial)
            continue
        if action != "skip" and previous and previous[0].status == "FAILED":
            done = previous[0]  # it raised there
        if done is not None:
            run.by_others += 1
            run.results.append((trial, stored_result(done)))
    run.elsewhere = still


def _run_inline(queue, take, on_result, plugins, tracker, progress, device, data_dir, checkpoint_dir,
                checkpoint_every, cuda_graphs, stop) -> None:
    """Every unit of ``queue`` in this process, one after another (each claimed by ``take`` as it
    starts; None: another process has it): the dataset stays on the device for all."""
    # pluggy calls the last registered first: the tracker closes a trial's run before the
    # progress line says it finished
    plugins.pm.register(progress, name="dlbench.progress")
    plugins.pm.register(Diagnostics(plugins.hook, plugins.registry), name="dlbench.diagnostics")
    plugins.pm.register(tracker, name="dlbench.tracking")
    cache = DataCache(data_dir)
    try:
        while (work := queue.next()) is not None:
            if (work := take(work)) is None:
                continue
            for trial, result in execute(work, plugins.registry, plugins.hook, cache, device, checkpoint_dir,
                                         checkpoint_every, cuda_graphs):
                on_result(trial, result)
            if stop():
                break
    finally:
        plugins.pm.unregister(name="dlbench.tracking")
        plugins.pm.unregister(name="dlbench.progress")
        plugins.pm.unregister(name="dlbench.diagnostics")


def write_reports(study_file: StudyFile, results, reports_dir: Path) -> list[Path]:
    """Reports from in-memory results, without a tracking store (`run_study` rebuilds them from MLflow)."""
    from dlbench.report import report_from_results

    return report_from_results(study_file, results, reports_dir)
