"""Worker processes: every core and every GPU busy, one writer to the tracking store.

Each worker is spawned once per study run, imports dlbench, loads the plugins and the data
once, and trains the units of work (trials or stacks) the parent hands it, one at a time, on
its device with its share of the CPU threads. What the parent's observers need (the MLflow
tracker, the progress line) comes back as events over a queue, so only the parent writes to
the store: no concurrent schema migration, no "database is locked". Observers that need the
model itself (the training diagnostics, a third party's ``dlbench_after_backward``) run in
the worker, next to the model.

A worker that dies (killed, out of memory) fails only the trials it was training: they are
marked FAILED with the reason and a new worker takes the remaining work.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue as queue_module
import signal
import traceback

import torch

from dlbench.children import become_helper
from dlbench.execution.devices import cpu_cores, default_jobs
from dlbench.execution.events import Forwarder, Router
from dlbench.execution.pool import Pool
from dlbench.execution.unit import execute
from dlbench.execution.world import WorkerSetup, data_configs, load_world, warm_up, worker_setup
from dlbench.planning import Work, plan, stack_settings
from dlbench.plugins import Plugins
from dlbench.trial import Trial, TrialResult

POLL_S = 0.5  # how often the parent looks for dead workers while it waits for events
START_METHOD_ENV = "DLBENCH_WORKER_START"  # fork or spawn, to override the choice (the tests use spawn on a CPU)


def _worker_main(worker: int, device: str, setup: WorkerSetup, tasks, events, acks, warm: list[dict]) -> None:
    become_helper()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the CLI's handler: drop it
    try:
        dev = torch.device(device)
        plugins, cache = load_world(setup, dev)
        warm_up(plugins, cache, dev, warm)
        plugins.pm.register(Forwarder(worker, events, acks), name="dlbench.forwarder")
    except Exception as exc:
        events.put(("broken", worker, None, "".join(traceback.format_exception(exc))))
        return
    events.put(("ready", worker, None, None))
    while (item := tasks.get()) is not None:
        execute(item, plugins.registry, plugins.hook, cache, dev, setup.checkpoints, setup.checkpoint_every,
                setup.cuda_graphs)
        events.put(("done", worker, None, None))


class _Worker:
    def __init__(self, ctx, number: int, device: str, setup: WorkerSetup, events, warm: list[dict]):
        self.number, self.device = number, device
        self.tasks, self.acks = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_worker_main, name=f"dlbench-worker-{number}", daemon=True,
                                   args=(number, device, setup, self.tasks, events, self.acks, warm))
        if ctx.get_start_method() == "fork" and not gc.get_freeze_count():
            # the start-up's objects (imports, plugins, data), inherited, stay out of both processes'
            # collections (Python's advice for fork); once: a worker started later to replace one
            # that died would freeze whatever the parent is drawing or logging then, for good
            gc.freeze()
        self.process.start()
        self.work: Work | None = None


def start_method(devices: list[str]) -> str:
    """How workers start. On a CPU, fork: a worker starts in milliseconds with torch, the plugins
    and what the preflight imported already there (the preflight computes on one thread, so no
    OpenMP pool exists yet to be copied half-alive). With CUDA, spawn: a CUDA context does not
    survive a fork, and a spawned worker takes seconds to import torch and start CUDA."""
    cpu_only = all(d.startswith("cpu") for d in devices) and "fork" in mp.get_all_start_methods()
    return os.environ.get(START_METHOD_ENV) or ("fork" if cpu_only else "spawn")


class WorkerPool(Pool):
    """``jobs`` worker processes over ``devices`` (round robin), started at once so that their
    start-up (imports, CUDA, the datasets in ``warm``: one config per dataset) overlaps with the
    parent's (the preflight, the tracking store)."""

    def __init__(self, jobs: int, devices: list[str], setup: WorkerSetup, warm: list[dict] = ()):
        self._ctx = mp.get_context(start_method(devices))
        self.devices, self.setup, self.warm = devices, setup, list(warm)
        self.events = self._ctx.Queue()
        self._started = 0
        self.workers = [self._spawn() for _ in range(jobs)]

    @property
    def description(self) -> str:
        return f"in {len(self.workers)} worker processes"

    @property
    def jobs(self) -> int:
        return len(self.workers)

    def prestart(self, works: list[Work]) -> list[Work]:
        """Hand each worker its first unit now, before the parent is ready to record anything:
        their events wait in the queue until :meth:`run` (only for a store that is known to be
        empty, so that nothing handed out here could have been skipped, resumed or claimed by
        another process). Returns the units handed out."""
        queue_ = list(works)
        for worker in self.workers:
            if queue_ and worker.work is None:
                worker.work = queue_.pop(0)
                worker.tasks.put(worker.work)
        return [w.work for w in self.workers if w.work is not None]

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self._started, self.devices[self._started % len(self.devices)], self.setup,
                         self.events, self.warm)
        self._started += 1
        return worker

    def run(self, queue, observers: list, on_result, claim=lambda work: work, stop=lambda: False) -> None:
        """See :meth:`dlbench.execution.pool.Pool.run`."""
        router = Router([w.work for w in self.workers if w.work is not None], observers, on_result)  # prestarted
        by_number = {w.number: w for w in self.workers}

        def fill() -> None:
            """Every idle worker gets the next unit (units come as searches' rounds end)."""
            if stop():  # --fail-fast: what is running finishes, nothing new starts
                queue.clear()
            for worker in list(by_number.values()):
                while worker.work is None and (unit := queue.next()) is not None:
                    if (unit := claim(unit)) is not None:
                        worker.work = unit
                        router.track(unit)
                        worker.tasks.put(unit)

        try:
            fill()
            self._loop(queue, by_number, router, fill)
        except KeyboardInterrupt:
            for worker in by_number.values():
                router.interrupted(worker.work)
            raise

    def _loop(self, queue, by_number, router: Router, fill) -> None:
        while any(w.work is not None for w in by_number.values()):
            try:
                kind, number, index, payload = self.events.get(timeout=POLL_S)
            except queue_module.Empty:
                for worker in list(by_number.values()):
                    if not worker.process.is_alive():
                        self._replace(worker, by_number, router.end, spare=queue.more())
                if not by_number:
                    raise RuntimeError("every worker process died; see the errors above") from None
                fill()
                continue
            worker = by_number.get(number)
            if kind == "ready":
                pass  # its first unit may be in its task queue already
            elif kind == "broken":
                del by_number[number]
                raise RuntimeError(f"worker {number} could not start:\n{payload}")
            elif kind == "done":
                worker.work = None
            else:
                router.route(kind, index, payload)
                if kind == "checkpoint":
                    worker.acks.put(True)
            fill()

    def _replace(self, worker: _Worker, by_number: dict, end, spare: bool) -> None:
        """A worker died: fail what it was training (the others go on); start another when
        there is work left (``spare``)."""
        del by_number[worker.number]
        if worker.work is not None:
            reason = (f"worker process {worker.process.pid} on {worker.device} died (exit code "
                      f"{worker.process.exitcode}) while training this trial; its other work went to a new worker")
            for trial in worker.work.members:
                end(trial.index, TrialResult(status="failed", error=reason))
        if spare:
            fresh = self._spawn()
            self.workers.append(fresh)
            by_number[fresh.number] = fresh

    def close(self, now: bool = False) -> None:
        """Stop every worker: idle ones finish at once; with ``now`` (Ctrl-C) busy ones are
        terminated, their trials already ended as interrupted by :meth:`run`."""
        for worker in self.workers:
            if worker.process.is_alive():
                try:
                    worker.tasks.put(None)
                except (OSError, ValueError):
                    pass
        for worker in self.workers:
            worker.process.join(timeout=0 if now else 5)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()


def start_workers(trials: list[Trial], plugins: Plugins, devices: list[torch.device], options,
                  searches=()) -> WorkerPool | None:
    """The local worker processes for a run of ``trials`` on ``devices`` with ``options``
    (:class:`dlbench.settings.RunOptions`; ``jobs`` None: as many as the machine has room for),
    or None when the units train in this process (one job). They start at once and warm up
    (imports, CUDA, the datasets when ``data_dir`` holds them already) while this process goes on."""
    jobs = options.jobs
    if jobs is None:  # --fail-fast stops at the first failure in file order: one unit at a time
        max_stack, _ = stack_settings(devices[0], options.stack_size, options.cuda_graphs)
        units = len(plan(trials, plugins.registry, max_stack)) + sum(s.spec.budget for s in searches)
        jobs = 1 if options.fail_fast else default_jobs(devices[0], units, len(devices))
    if jobs <= 1:
        return None
    threads = max(1, cpu_cores() // jobs) if devices[0].type == "cpu" else 1
    setup = worker_setup(plugins, options, threads)
    in_place = options.data_dir is None or options.data_dir.is_dir()  # else the parent's data check writes it first
    return WorkerPool(jobs, [str(d) for d in devices], setup, warm=data_configs(trials) if in_place else [])
