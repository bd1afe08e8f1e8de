"""Drawing a report's figures: one after another in this process, or several at once in processes.

A figure (``figures.py``) is a function of data frames that writes one PNG, and drawing it is
mostly matplotlib's Python: in threads, figures would wait for each other (the GIL); in
processes they do not. A report of 50 levels spends most of its time in five figures of 4-7 s
each (learning curves, gradient norms, saturation, activations, on a 2-core CPU), which
processes draw side by side on as many cores. Starting a process costs its imports (pandas,
matplotlib, seaborn: about 2 s), so a pool is worth it where it starts ahead of time (``dlbench
run`` with cores to spare starts it with the run, the imports done while the study trains) or
where the figures are large. A figure drawn in another process is the same file, byte for byte.
"""

from __future__ import annotations

import importlib
import inspect
import io
import multiprocessing
import os
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

from dlbench.children import become_helper

# A report has at most 9 figures, and four or five of them take most of its time: with 4
# processes a report of 50 levels waits for its largest figure, about as long as with 8.
MAX_PROCESSES = 4
# A study of at least this many trials draws its figures in processes even when the pool has
# not started yet (its start is then paid in full). Below it the figures take a few seconds
# (ablation.toml's largest study, 30 trials: about 6 s on this project's 2-core CPU), of the
# order of starting the pool (about 2 s of imports a process, on the same cores): a judgement,
# not a measured crossover; 500 trials: 29.0 s in one process, 21.5 s with 2 started for it.
LARGE_STUDY = 100


def spare_processes(busy: int = 0) -> int:
    """How many figure processes this machine has room for besides ``busy`` cores' work: 0 when
    fewer than two cores would be left (drawing in this process is then as fast)."""
    free = (os.cpu_count() or 1) - busy
    return min(MAX_PROCESSES, free) if free >= 2 else 0


class Painter:
    """Draws figures for the reports of one command, in a pool of ``processes`` processes (0:
    in this process). ``warm``: start the pool now and let it import while the caller goes on;
    otherwise it starts for the first study of at least :data:`LARGE_STUDY` trials. Where
    processes cannot start (a sandbox without semaphores, say), the figures are drawn here."""

    def __init__(self, processes: int = 0, warm: bool = False):
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        if processes and warm and self._start() is not None:
            for _ in range(processes):
                self._pool.submit(_ready)

    def grow(self, processes: int) -> None:
        """Use up to ``processes`` processes from the next large study on (the cores the training
        used are free), when no pool has started yet."""
        if self._pool is None:
            self.processes = max(self.processes, processes)

    def batch(self, trials: int) -> Batch:
        """The figures of one report (of a study of ``trials`` trials): in the pool when it has
        started, or when the study is large enough to start it for."""
        if self._pool is None and self.processes and trials >= LARGE_STUDY:
            self._start()
        return Batch(self._pool)

    def close(self, now: bool = False) -> None:
        """Stop the pool; ``now``: drop the figures not started (Ctrl-C)."""
        if self._pool is not None:
            self._pool.shutdown(wait=not now, cancel_futures=now)
            self._pool = None

    def _start(self) -> ProcessPoolExecutor | None:
        try:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_child)
        except (OSError, RuntimeError) as exc:  # no semaphores or pipes for processes here
            warnings.warn(f"the report's figures are drawn one after another: no figure process could start ({exc})")
            self.processes, self._pool = 0, None
        return self._pool


class Batch:
    """``draw(figure, *args)`` for each figure of one report, then ``wait()`` before the report
    is written: a figure's exception is raised there, as it would be in this process. A figure
    whose process could not run it (the pool broke: a process killed, or none could start) is
    drawn here instead."""

    def __init__(self, pool: ProcessPoolExecutor | None):
        self.pool = pool
        self.pending: list[tuple[Future, Callable, tuple, dict]] = []

    def draw(self, figure: Callable[..., Path], *args, **kwargs) -> Path:
        """Draw ``figure(*args, **kwargs)``, which writes its ``path`` argument; returns that path."""
        if self.pool is not None:
            try:
                self.pending.append((self.pool.submit(figure, *args, **kwargs), figure, args, kwargs))
                return Path(inspect.signature(figure).bind(*args, **kwargs).arguments["path"])
            except (BrokenProcessPool, RuntimeError):  # broken or shut down: this process draws
                self.pool = None
        return figure(*args, **kwargs)

    def wait(self) -> None:
        for future, figure, args, kwargs in self.pending:
            try:
                future.result()
            except BrokenProcessPool:
                figure(*args, **kwargs)


def _child() -> None:
    """A figure process: Ctrl-C is the parent's to handle, and it dies with the parent."""
    become_helper()


def _ready() -> None:
    """The imports and matplotlib's first-figure set-up (its font list), before the first report."""
    import matplotlib.pyplot as plt

    importlib.import_module("dlbench.report.figures")  # pandas, matplotlib, seaborn

    fig = plt.figure(figsize=(1, 1))
    fig.text(0.5, 0.5, "x")
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
