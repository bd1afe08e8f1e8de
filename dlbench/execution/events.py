"""The lifecycle events of trials trained in another process, on their way to this one.

In a worker (a local process or a Ray task), :class:`Forwarder` is an observer that puts each
event of its trials into a channel; in the parent, :class:`Router` turns them back into calls of
the observers' hooks (the MLflow tracker, the progress line), ending each trial exactly once.
"""

from __future__ import annotations

import socket

import torch

from dlbench import hookimpl
from dlbench.planning import Work
from dlbench.provenance import environment
from dlbench.trial import TrialResult


class ModelText:
    """The model as the parent's observers see it: its printed form (the tracker logs it)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class Forwarder:
    """In a worker: sends the lifecycle events of its trials to the parent (``events.put``) and,
    after a checkpoint event, waits for the parent's acknowledgement (``acks.get``)."""

    def __init__(self, worker: int | None, events, acks):
        self.worker, self.events, self.acks = worker, events, acks

    @hookimpl
    def dlbench_trial_start(self, trial, model, info) -> None:
        # the parent opened the run with its own environment: the worker's device, threads and host
        where = environment(torch.device(info["device"])) | {"dlbench.worker_host": socket.gethostname()}
        self.events.put(("start", self.worker, trial.index, (repr(model), info | {"environment": where})))

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch, metrics) -> None:
        self.events.put(("epoch", self.worker, trial.index, (epoch, metrics)))

    @hookimpl
    def dlbench_diagnostics(self, trial, step, values) -> None:
        self.events.put(("diag", self.worker, trial.index, (step, values)))

    @hookimpl
    def dlbench_checkpoint(self, trial, epoch) -> None:
        # the checkpoint is written only once the parent has made what came before durable
        self.events.put(("checkpoint", self.worker, trial.index, epoch))
        self.acks.get()

    @hookimpl
    def dlbench_trial_end(self, trial, result) -> None:
        self.events.put(("end", self.worker, trial.index, result))


class Router:
    """In the parent: turns the events of the trials being trained elsewhere (a worker process,
    a Ray task) into calls of the observers' lifecycle hooks, and ends each trial exactly once."""

    def __init__(self, works: list[Work], observers: list, on_result):
        self.trials = {t.index: t for w in works for t in w.members}
        self.observers, self.on_result = observers, on_result
        self.ended: set[int] = set()

    def track(self, work: Work) -> None:
        """``work`` is handed out: its trials' events may come."""
        self.trials.update({t.index: t for t in work.members})

    def call(self, hook: str, **kwargs) -> None:
        for observer in self.observers:
            method = getattr(observer, hook, None)
            if method is not None:
                method(**kwargs)

    def end(self, index: int, result: TrialResult) -> None:
        if index in self.ended:
            return
        self.ended.add(index)
        self.call("dlbench_trial_end", trial=self.trials[index], result=result)
        self.on_result(self.trials[index], result)

    def interrupted(self, work: Work | None, error: str | None = None) -> None:
        """End ``work``'s trials that have not ended as interrupted: their runs KILLED, resumable."""
        for trial in work.members if work is not None else ():
            self.end(trial.index, TrialResult(status="interrupted", error=error))

    def route(self, kind: str, index: int, payload) -> None:
        trial = self.trials[index]
        if kind == "start":
            text, info = payload
            self.call("dlbench_trial_start", trial=trial, model=ModelText(text), info=info)
        elif kind == "epoch":
            self.call("dlbench_epoch_end", trial=trial, epoch=payload[0], metrics=payload[1])
        elif kind == "diag":
            self.call("dlbench_diagnostics", trial=trial, step=payload[0], values=payload[1])
        elif kind == "checkpoint":  # the caller tells the worker once this returns: what came before is stored
            self.call("dlbench_checkpoint", trial=trial, epoch=payload)
        elif kind == "end":
            self.end(index, payload)
