"""What a running study shows on its terminal.

Every trial's end is a line, ``[21/50] activation_depth/relu, depth=1, seed=0  finished (20 epochs,
0.2s)  train_acc 0.746 ...``, and so is whatever else the run says (a trial skipped, resumed,
recorded from an identical one). On a terminal those lines scroll above a live view drawn with
rich: one bar for the whole study (trials done of the total, the diverged, failed and pruned
counts, the time elapsed and the ETA of ``study_progress.py``), a line per slot of the pool (a
worker process, a Ray task, this process) with its unit (a trial or a stack of N), its epoch and
latest metrics, and a line per tuning search (its stage, round, trials asked, best value so far). In a
log, a pipe or CI the view is not drawn: the same lines, plain, and at most every
:data:`PLAIN_EVERY_S` seconds one line of the study's progress; no control characters.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dlbench import hookimpl
from dlbench.eta import duration, unit_kind
from dlbench.study_progress import OUTCOMES, progress_text

SHOWN = [("train_accuracy", "train_acc"), ("val_accuracy", "val_acc"), ("test_accuracy", "test_acc"),
         ("train_loss", "loss")]
PLAIN_EVERY_S = 30.0  # in a log or a pipe: the study's progress at most this often
REFRESH_PER_S = 4  # the live view's redraws


def metrics_text(metrics: dict[str, float]) -> str:
    return "  ".join(f"{short} {metrics[key]:.3f}" for key, short in SHOWN if key in metrics)


@dataclass
class Slot:
    """A unit in training: its trials started so far, the epoch and metrics last reported."""

    key: str  # the stack's id, or the lone trial's
    size: int  # trials in the unit
    trials: list = field(default_factory=list)
    epoch: int | None = None  # None: no epoch ended yet
    epochs: int = 0
    metrics: dict = field(default_factory=dict)
    ended: int = 0

    def describe(self) -> str:
        first = self.trials[0]
        what = first.title if self.size == 1 else f"{unit_kind(self.size)}: {first.title} and {self.size - 1} more"
        at = "starting" if self.epoch is None else f"epoch {self.epoch}/{self.epochs}"
        return f"{what}  {at}  {metrics_text(self.metrics)}".rstrip()


class StudyView:
    """The terminal's view of a running study: a pluggy observer of the trials' lifecycle.

    ``snapshot`` gives the study's progress (``ProgressPublisher.snapshot``), taken when the view
    starts and during a long unit; :meth:`show` takes each one published; ``slots``: the units
    trained at once; ``searches``: the study's tuning searches. ``live`` (default: whether
    ``stream`` is a terminal, and not a dumb one) draws the live view between :meth:`start` and :meth:`stop`; write
    every other line through :attr:`lines` meanwhile, so that it scrolls above the view."""

    def __init__(self, total: int, snapshot: Callable[[], dict], stream: TextIO, slots: int = 1, searches=(),
                 live: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.snapshot, self.stream = total, snapshot, stream
        self.slots: list[Slot | None] = [None] * max(slots, 1)
        self.searches = list(searches)
        if live is None:  # a terminal, and not a dumb one (a stream without isatty is none)
            live = getattr(stream, "isatty", lambda: False)() and os.environ.get("TERM") != "dumb"
        self.live = live
        self.clock = clock
        self.lines = Lines(self._print)
        self._where: dict[int, Slot] = {}  # trial index -> the slot that trains it
        self._progress: dict = {}  # the last snapshot (taken from start() on)
        self._seen_at = clock()
        self._last_plain = clock()
        self._lock = threading.Lock()  # the live view redraws in rich's thread
        self._live: Live | None = None

    # -- the live view's life -----------------------------------------------------------------

    def start(self) -> None:
        self._progress, self._seen_at = self.snapshot(), self.clock()
        if self.live and self._live is None:
            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self._live = Live(get_renderable=self.render, console=console, refresh_per_second=REFRESH_PER_S,
                              transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()

    def stop(self) -> None:
        """The view drawn one last time and left on the screen (also after Ctrl-C)."""
        if self._live is not None:
            with self._lock:
                self._progress, self._seen_at = self.snapshot(), self.clock()
                self.slots, self.searches = [], []  # what stays on the screen: the study's bar
            self._live.stop()
            self._live = None
        self.lines.flush()

    def _print(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(Text(line), soft_wrap=True)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    # -- the trials' lifecycle ------------------------------------------------------------------

    @hookimpl
    def dlbench_trial_start(self, trial, model, info) -> None:
        stack = info.get("stack")
        key = stack.id if stack else f"trial {trial.index}"
        with self._lock:
            slot = next((s for s in self.slots if s is not None and s.key == key), None)
            if slot is None:
                slot = Slot(key, size=stack.size if stack else 1, epochs=trial.config["epochs"])
                if None in self.slots:
                    self.slots[self.slots.index(None)] = slot
                else:  # more units at once than slots (a pool's last ones may overlap a moment)
                    self.slots.append(slot)
            slot.trials.append(trial)
            self._where[trial.index] = slot

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch: int, metrics: dict[str, float]) -> None:
        progress = self.snapshot() if self.live and self.clock() - self._seen_at >= 1.0 else None
        with self._lock:
            slot = self._where.get(trial.index)
            if slot is not None and slot.trials[0] is trial:  # a stack shows its first member's
                slot.epoch, slot.metrics = epoch, dict(metrics)
            if progress is not None:  # a long unit: the ETA follows the time it has run (once a second)
                self._progress, self._seen_at = progress, self.clock()

    @hookimpl
    def dlbench_trial_end(self, trial, result) -> None:
        detail = metrics_text(result.final) if result.final else ""
        if result.status == "failed":
            detail = (result.error or "").strip().splitlines()[-1] if result.error else "error"
        self.lines.write(f"[{trial.index}/{self.total}] {trial.title}  {result.status} "
                         f"({result.epochs_run} epochs, {result.seconds:.1f}s)  {detail}\n")
        with self._lock:
            slot = self._where.pop(trial.index, None)
            if slot is not None:
                slot.ended += 1
                if slot.ended >= slot.size and slot in self.slots:
                    self.slots[self.slots.index(slot)] = None

    def show(self, progress: dict) -> None:
        """The study's ``progress`` as just published (at each trial's end, and every few seconds):
        the view follows it; in a log, a line of it now and then."""
        with self._lock:
            self._progress, self._seen_at = progress, self.clock()
        if not self.live and self.clock() - self._last_plain >= PLAIN_EVERY_S and progress["done"] < progress["total"]:
            self._last_plain = self.clock()
            self.lines.write(f"progress: {progress_text(progress)}\n")

    # -- drawing ---------------------------------------------------------------------------------

    def render(self):
        """The live view now: the study's bar, a line per slot, a line per search."""
        with self._lock:
            progress, age = dict(self._progress), self.clock() - self._seen_at
            slots = [(i, s.describe() if s is not None else "idle") for i, s in enumerate(self.slots)]
            searches = self._search_lines()
        elapsed = progress["elapsed_s"] + age
        eta = None if progress["eta_s"] is None else max(progress["eta_s"] - age, 0.0)
        counts = ", ".join(f"{progress.get(k, 0)} {k}" for k in OUTCOMES[1:])
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=max(progress["total"], 1), completed=progress["done"], width=24),
                    Text.assemble(f"{progress['done']}/{progress['total']} trials ", (f"({counts})", "dim"),
                                  ("  elapsed ", "bold"), (duration(elapsed), "bold"), ("  ETA ", "bold"),
                                  (duration(eta), "bold"), no_wrap=True, overflow="ellipsis"))
        rows = Table.grid(padding=(0, 1))
        for i, text in slots:  # a narrow terminal cuts a line short rather than wrapping it
            rows.add_row(Text(f"[{i + 1}]", style="cyan"),
                         Text(text, style="dim" if text == "idle" else "", no_wrap=True, overflow="ellipsis"))
        for line in searches:
            rows.add_row(Text("tune", style="magenta"), Text(line, no_wrap=True, overflow="ellipsis"))
        return Group(bar, rows)

    def _search_lines(self) -> list[str]:
        lines = []
        for search in self.searches:
            spec = search.spec
            if search.finals is not None:
                state = "training the best values with the study's seeds" if search.finals else "no trial finished"
            else:
                state = (f"stage {search.stage + 1}/{len(spec.stages)}, round {search.rounds}, "
                         f"{search.asked}/{spec.budget} trials asked")
            best = search.best_so_far()
            shown = "none finished yet" if best is None else f"{best[1]:.4g} (trial {best[0]})"
            lines.append(f"{search.study.name}/{search.level} ({spec.strategy}): {state}; best {spec.metric} {shown}")
        return lines


class Lines:
    """A text stream whose complete lines go to ``emit`` (one call per line, without its newline)."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit, self.pending = emit, ""

    def write(self, text: str) -> int:
        self.pending += text
        *complete, self.pending = self.pending.split("\n")
        for line in complete:
            self.emit(line)
        return len(text)

    def flush(self) -> None:
        if self.pending:
            line, self.pending = self.pending, ""
            self.emit(line)

    def isatty(self) -> bool:
        return False
