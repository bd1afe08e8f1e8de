"""Trials on a Ray cluster: each unit of work (a trial or a stack) is a Ray task.

The parent stays the one writer to the tracking store, as with local workers (``local.py``):
a task sends its trials' lifecycle events to one small actor (:class:`EventHub`) that the parent
drains, and a checkpoint is written only once the parent has acknowledged that what came before
is stored. A task asks Ray for CPUs and whole or fractional GPUs (``Resources``); Ray places it on
any node with room. Each Ray worker process imports dlbench and loads the plugins and the data once
(:func:`_world`), then trains every task it is given.

A task whose worker dies (killed, out of memory, its node lost) is retried by Ray
(``max_retries``): the new attempt continues from the unit's last checkpoint, and the parent's
tracker drops the steps it has logged already. When the retries are spent, the trials end
interrupted (their runs KILLED): the next ``dlbench run`` resumes them from the checkpoint.
Checkpoints are files in ``--checkpoint-dir``: on a cluster of several machines, a folder every
node sees at the same path (NFS, a shared volume).

Ray is an optional extra (``pip install 'dlbench[ray]'``); this module imports it.
"""

from __future__ import annotations

import logging
import pickle
import signal
import time
import traceback
import uuid
from dataclasses import dataclass

import ray
import torch

from dlbench.errors import EXIT_TRY_AGAIN, UserError
from dlbench.execution.events import Forwarder, Router
from dlbench.execution.pool import Pool
from dlbench.execution.unit import execute
from dlbench.execution.world import WorkerSetup, data_configs, load_world, worker_setup
from dlbench.execution.world import warm_up as warm_world
from dlbench.plugins import Plugins
from dlbench.settings import RaySettings
from dlbench.trial import Trial, TrialResult

POLL_S = 0.1  # how long the parent waits for a task to end before it drains the events again
CHECKPOINT_POLL_S = 0.01  # ... for a second after a checkpoint: a task waits for its acknowledgement
ACK_POLL_S = 0.02  # how often a task asks whether its checkpoint may be written
DEFAULT_GPUS_PER_UNIT = 0.5  # two units share a GPU, as two local workers per GPU do


class ClusterLost(UserError):
    """The Ray cluster went away during the study: its trials are left resumable."""

    exit_code = EXIT_TRY_AGAIN


@dataclass(frozen=True)
class Resources:
    """What each unit of work asks Ray for: CPUs and (whole or fractional) GPUs."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __str__(self) -> str:
        return f"{self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "") + " per unit"


class EventHub:
    """A Ray actor: the mailbox between the tasks and the parent. Tasks put batches of their
    events (pickled, so this actor never imports torch or dlbench); the parent takes them all, in
    the order each task sent them, and acknowledges checkpoints."""

    def __init__(self):
        self._batches: list[bytes] = []
        self._acked: set[str] = set()

    def put(self, batch: bytes) -> None:
        self._batches.append(batch)

    def take(self) -> list[bytes]:
        batches, self._batches = self._batches, []
        return batches

    def ack(self, token: str) -> None:
        self._acked.add(token)

    def acked(self, token: str) -> bool:
        if token in self._acked:
            self._acked.discard(token)
            return True
        return False


class _Channel:
    """In a task: what the worker-side ``Forwarder`` puts its events into (``put``) and waits on
    after a checkpoint event (``get``). Events go to the hub in batches, at most ``SEND_EVERY_S``
    apart, and at once for a checkpoint and a trial's end (an actor call per event would cost
    the hub a core's share on a small machine). Events a dead worker had not sent are sent
    again by the attempt that continues from the checkpoint."""

    SEND_EVERY_S = 1.0

    def __init__(self, hub):
        self.hub, self._token = hub, None
        self._pending: list[tuple] = []
        self._sent = time.monotonic()

    def put(self, event) -> None:
        kind, _, index, payload = event
        self._token = uuid.uuid4().hex if kind == "checkpoint" else None
        self._pending.append((kind, index, payload, self._token))
        if kind in ("end", "checkpoint"):
            ray.get(self._send())  # stored in the hub before the task goes on (or returns)
        elif time.monotonic() - self._sent >= self.SEND_EVERY_S:
            self._send()

    def _send(self):
        batch, self._pending = self._pending, []
        self._sent = time.monotonic()
        return self.hub.put.remote(pickle.dumps(batch))

    def get(self):
        while not ray.get(self.hub.acked.remote(self._token)):
            time.sleep(ACK_POLL_S)
        return True


_WORLDS: dict = {}  # per Ray worker process: setup -> (plugins, data cache, device)


def _world(setup):
    """The plugins, the data cache and the device of this Ray worker process, made once."""
    if setup not in _WORLDS:
        device = torch.device("cuda", 0) if ray.get_gpu_ids() else torch.device("cpu")  # Ray set CUDA_VISIBLE_DEVICES
        _WORLDS[setup] = (*load_world(setup, device), device)
    return _WORLDS[setup]


def warm_up(setup, configs: list[dict]) -> None:
    """A Ray task sent to each slot as the pool starts: this worker process imports dlbench, loads
    the plugins and the study's datasets (seconds) while the parent opens the tracking store."""
    warm_world(*_world(setup), configs)


def train_unit(work, setup, hub) -> None:
    """The body of a Ray task: train ``work`` as the local executor does, its events to ``hub``."""
    channel = _Channel(hub)
    try:
        plugins, cache, device = _world(setup)
    except Exception as exc:  # plugins or data that do not load on this node: the unit's trials fail, saying why
        error = "".join(traceback.format_exception(exc))
        for trial in work.members:
            channel.put(("end", None, trial.index, TrialResult(status="failed", error=error)))
        return
    plugins.pm.register(Forwarder(None, channel, channel), name="dlbench.forwarder")  # the hub needs no number
    try:
        execute(work, plugins.registry, plugins.hook, cache, device, setup.checkpoints, setup.checkpoint_every,
                setup.cuda_graphs)
    finally:
        plugins.pm.unregister(name="dlbench.forwarder")


class RayPool(Pool):
    """The units of work as Ray tasks on the cluster this process is connected to (see
    :func:`ray_pool`), at most ``jobs`` claimed at once (None: as many as the cluster's resources
    hold)."""

    def __init__(self, setup: WorkerSetup, resources: Resources, jobs: int | None, max_retries: int, local: bool):
        self.resources, self.setup, self.local = resources, setup, local
        total = ray.cluster_resources()
        self.cluster = {k: total.get(k, 0.0) for k in ("CPU", "GPU")}
        room = int(self.cluster["CPU"] // resources.cpus)
        if resources.gpus:
            room = min(room, int(self.cluster["GPU"] // resources.gpus))
        self.jobs = jobs or max(1, room)
        self.device = torch.device("cuda" if resources.gpus else "cpu")  # what the tasks train on
        self.hub = ray.remote(num_cpus=0)(EventHub).remote()
        self._task = ray.remote(train_unit).options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                                    max_retries=max_retries, retry_exceptions=False)
        self._inflight: dict = {}  # ObjectRef -> the unit it trains
        self._warming: list = []
        self._last_ack = 0.0  # when a checkpoint was last acknowledged

    @property
    def description(self) -> str:
        where = "a local Ray cluster" if self.local else "the Ray cluster"
        gpus = f", {self.cluster['GPU']:g} GPUs" if self.cluster["GPU"] else ""
        return f"as Ray tasks on {where} ({self.cluster['CPU']:g} CPUs{gpus}; {self.resources}, {self.jobs} at once)"

    def warm(self, configs: list[dict]) -> None:
        """Start a worker process for each slot now, with its world and ``configs``' datasets
        loaded; the units of work then find them ready (a failure there fails the units, which
        report it)."""
        warm = ray.remote(warm_up).options(num_cpus=self.resources.cpus, num_gpus=self.resources.gpus, max_retries=0)
        self._warming = [warm.remote(self.setup, configs) for _ in range(self.jobs)]

    def _submit(self, work) -> None:
        self._inflight[self._task.remote(work, self.setup, self.hub)] = work

    def prestart(self, works: list) -> list:
        """Submit the first units before the parent is ready to record anything (a store known to
        be empty: see :meth:`Pool.prestart`); returns them."""
        early = list(works)[:self.jobs]
        for work in early:
            self._submit(work)
        return early

    def run(self, queue, observers: list, on_result, claim=lambda work: work, stop=lambda: False) -> None:
        """Train every unit of ``queue`` (see :meth:`Pool.run`): keep ``jobs`` tasks in flight, each claimed as
        it is submitted; route their events; a task Ray could not complete ends its trials
        interrupted (resumable). On Ctrl-C, cancel the tasks, end their trials interrupted, re-raise."""
        router = Router(list(self._inflight.values()), observers, on_result)  # prestarted
        try:
            while True:
                if stop():  # --fail-fast: what is running finishes, nothing new starts
                    queue.clear()
                # no more than the slots: a unit waiting in Ray's queue makes Ray start (and later
                # stop) another worker process, which loads everything again
                while len(self._inflight) < self.jobs and (unit := queue.next()) is not None:
                    if (work := claim(unit)) is not None:
                        router.track(work)
                        self._submit(work)
                if not self._inflight:  # nothing running: nothing can make more work ready
                    break
                checkpointing = time.monotonic() - self._last_ack < 1.0
                ready, _ = ray.wait(list(self._inflight), num_returns=1,
                                    timeout=CHECKPOINT_POLL_S if checkpointing else POLL_S)
                self._drain(router)  # a task's events are in the hub before it returns
                for ref in ready:
                    work = self._inflight.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # raised in dlbench's task code: a bug
                        for trial in work.members:
                            router.end(trial.index, TrialResult(status="failed", error=str(exc)))
                    except ray.exceptions.RayError as exc:  # its worker (or node) died, Ray's retries spent
                        router.interrupted(work, error=f"the Ray task training this trial did not complete "
                                                       f"(its worker died and Ray's retries were spent): {exc}\n"
                                                       "Run the same command again to resume it from its checkpoint.")
        except KeyboardInterrupt:
            try:
                self._drain(router)  # a trial whose end was sent already ended, not interrupted
            except ray.exceptions.RayError:
                pass
            for ref, work in self._inflight.items():
                ray.cancel(ref, force=True)
                router.interrupted(work)
            self._inflight.clear()
            raise
        except ray.exceptions.RayError as exc:  # not one task: the cluster itself (or the event hub) is gone
            reason = f"the Ray cluster stopped answering: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            for work in self._inflight.values():
                router.interrupted(work, error=reason)
            raise ClusterLost(f"{reason}. The {sum(len(w.members) for w in self._inflight.values())} trials "
                              "it was training are left KILLED with their checkpoints: run the same command again "
                              "once the cluster is up to resume them.") from None

    def _drain(self, router) -> None:
        for batch in ray.get(self.hub.take.remote()):
            for kind, index, payload, token in pickle.loads(batch):
                router.route(kind, index, payload)
                if token is not None:  # a checkpoint: what came before is stored, it may be written
                    self.hub.ack.remote(token)
                    self._last_ack = time.monotonic()

    def close(self, now: bool = False) -> None:
        """Cancel what still runs; shut down the cluster this process started (or disconnect)."""
        if not ray.is_initialized():  # closed already (any call now would start Ray again)
            return
        try:
            for ref in [*self._inflight, *self._warming]:
                ray.cancel(ref, force=True)
        except ray.exceptions.RayError:
            pass  # the cluster is gone: nothing left to cancel
        self._inflight.clear()
        self._warming.clear()
        ray.shutdown()


def start_ray(plugins: Plugins, trials: list[Trial], options) -> RayPool:
    """Join (or start) the Ray cluster of ``options.ray`` (:class:`dlbench.settings.RunOptions`) and
    send each of its slots a warm-up task: its worker processes import dlbench and load the plugins
    and the data while this process goes on (the preflight, the tracking store). Close the pool
    when done."""
    settings = options.ray
    setup = worker_setup(plugins, options, threads=max(1, int(settings.resources.get("cpu", 1))))
    # --fail-fast stops at the first failure in file order: one unit at a time
    pool = ray_pool(settings, setup, 1 if options.fail_fast else options.jobs)
    pool.warm(data_configs(trials))
    return pool


def ray_pool(settings: RaySettings, setup: WorkerSetup, jobs: int | None) -> RayPool:
    """Connect to the Ray cluster at ``settings.address`` (None: start a local one of this machine's
    cores) and make the pool, with the GPU request ``settings.device`` implies: ``cpu`` asks for
    none, ``cuda`` needs GPUs in the cluster, ``auto`` uses them when the cluster has some."""
    address, resources, device, max_retries = settings.address, settings.resources, settings.device, settings.max_retries
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device} with --executor ray: Ray assigns each task its GPU; use auto, cpu "
                        "or cuda (and --resources gpu=N for the share of a GPU each unit asks for)")
    if not ray.is_initialized():
        if address is None:  # a cluster of this run's own: its default token auth needs no warning
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        on_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            # ray.init puts in a SIGTERM handler that exits at once: `kill` must close the runs as Ctrl-C does
            signal.signal(signal.SIGTERM, on_sigterm)
        except ConnectionError as exc:
            raise UserError(f"--address {address}: no Ray cluster answers there, or it refused this machine's "
                            f"token ({exc}). Start one with `ray start --head` (then --address auto or HOST:6379); "
                            "a cluster with token authentication (the default of `ray start` since Ray 2.59) "
                            "needs RAY_AUTH_MODE=token here and its token (`ray get-auth-token` on its head "
                            "prints it: put it in ~/.ray/auth_token or RAY_AUTH_TOKEN). Or leave "
                            "--address out to run on a local Ray cluster of this machine.") from None
    total = ray.cluster_resources()
    cluster, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
    gpus = resources.get("gpu")
    problem = None
    if device == "cpu" and gpus:
        problem = "--device cpu with --resources gpu=...: ask for GPUs with --device cuda or auto"
    elif device == "cuda" and not cluster:
        problem = ("--device cuda with --executor ray: the Ray cluster has no GPU; use --device auto or cpu, "
                   "or add nodes with GPUs to the cluster")
    elif device == "cuda" and gpus == 0:
        problem = "--device cuda with --resources gpu=0: ask for a share of a GPU, e.g. gpu=0.5"
    elif gpus and not cluster:
        problem = (f"--resources gpu={gpus:g}: the Ray cluster has no GPU, so no unit could ever start; "
                   "leave gpu out, or add nodes with GPUs to the cluster")
    elif resources.get("cpu", 1.0) > cpus:
        problem = (f"--resources cpu={resources['cpu']:g}: the Ray cluster has {cpus:g} CPUs, so no unit could "
                   "ever start; ask for fewer")
    if problem:
        ray.shutdown()
        raise UserError(problem)
    if gpus is None:
        gpus = DEFAULT_GPUS_PER_UNIT if cluster and device != "cpu" else 0.0
    return RayPool(setup, Resources(cpus=resources.get("cpu", 1.0), gpus=gpus), jobs, max_retries,
                   local=address is None)
