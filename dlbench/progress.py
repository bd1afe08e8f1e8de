"""Progress of a running study: one live line on a terminal, plain lines in a log or pipe."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from dlbench import hookimpl

SHOWN = [("train_accuracy", "train_acc"), ("val_accuracy", "val_acc"), ("test_accuracy", "test_acc"),
         ("train_loss", "loss")]


class Progress:
    """A plugin that shows trial i/N, the epoch and the current metrics."""

    def __init__(self, total: int, stream: TextIO | None = None, live: bool | None = None):
        self.total = total
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._last_draw = 0.0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    @staticmethod
    def _metrics(metrics: dict[str, float]) -> str:
        return "  ".join(f"{short} {metrics[key]:.3f}" for key, short in SHOWN if key in metrics)

    @hookimpl
    def dlbench_trial_start(self, trial, model, info) -> None:
        if self.live:
            self._write(f"\r\x1b[2K[{trial.index}/{self.total}] {trial.title}  building...")

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if not self.live or now - self._last_draw < 0.1:  # redraw at most 10 times a second
            return
        self._last_draw = now
        epochs = trial.config["epochs"]
        self._write(f"\r\x1b[2K[{trial.index}/{self.total}] {trial.title}  epoch {epoch}/{epochs}  "
                    f"{self._metrics(metrics)}")

    @hookimpl
    def dlbench_trial_end(self, trial, result) -> None:
        prefix = "\r\x1b[2K" if self.live else ""
        detail = self._metrics(result.final) if result.final else ""
        if result.status == "failed":
            detail = (result.error or "").strip().splitlines()[-1] if result.error else "error"
        self._write(f"{prefix}[{trial.index}/{self.total}] {trial.title}  {result.status} "
                    f"({result.epochs_run} epochs, {result.seconds:.1f}s)  {detail}\n")
