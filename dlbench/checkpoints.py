"""Epoch-end checkpoints of running trials, and the random-number state they carry.

A trial trained alone saves its model, optimizer, schedule and regularizers
(:meth:`Checkpoints.save`, :meth:`Checkpoints.restore`); a stack saves its own state through
:meth:`Checkpoints.write` and :meth:`Checkpoints.read` (``train_stack.py``). Either way the
global RNG states go with it, so a resumed trial draws what it would have drawn.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from dlbench.trial import TrialResult


class Checkpoints:
    """The epoch-end checkpoint of one trial: model, optimizer, schedule, regularizer and RNG
    states plus the metric history, so a killed trial resumes where it stopped and ends with the
    same metrics as an uninterrupted run. Written atomically (a kill never leaves half a file)."""

    def __init__(self, path: Path, every_seconds: float = 10.0):
        self.path = Path(path)
        self.every_seconds = every_seconds  # a checkpoint costs a store flush: not every short epoch
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_seconds

    def write(self, state: dict) -> None:
        """Save ``state`` with the RNG states, atomically."""
        state = {**state, "rng": rng_state()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self._last = time.monotonic()

    def read(self) -> dict | None:
        """The saved state (RNG states restored), or None when there is none."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)  # our own file
        set_rng_state(state["rng"])
        return state

    def save(self, epoch: int, model, optimizer, schedule, regularizers, result: TrialResult) -> None:
        self.write({
            "epoch": epoch, "history": result.history, "status": result.status,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "regularizers": [reg.state_dict() for reg in regularizers],
        })

    def restore(self, model, optimizer, schedule, regularizers) -> dict | None:
        """Load the checkpoint into the objects; returns its epoch and history, or None."""
        state = self.read()
        if state is None:
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        for reg, reg_state in zip(regularizers, state["regularizers"]):
            reg.load_state_dict(reg_state)
        return state

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
