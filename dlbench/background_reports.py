"""Reports built while the study still trains.

``dlbench run`` hands a study to :class:`BackgroundReports` as soon as its last trial has ended
(and the tracker has flushed it): a thread of the dlbench process rebuilds that study's report
from MLflow, exactly as ``dlbench report`` would, while the worker processes train the other
studies (the dlbench process itself mostly waits for their events meanwhile). Building figures
is a good part of a small study's time; this way it overlaps with training instead of following
it. One thread: its figures are drawn in processes where the machine has cores to spare beside
the training workers (``report/painter.py``: the pool starts with the run, so its imports are
done by the first report), else in the thread one after another.
"""

from __future__ import annotations

import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TextIO


def _build(tracking_uri: str, parent_run_id: str, reports_dir: str, study: str, trials, painter) -> list[str]:
    from dlbench.report import report_from_mlflow

    return [str(p) for p in report_from_mlflow(tracking_uri, parent_run_id, Path(reports_dir), [study], trials=trials,
                                               painter=painter)]


class BackgroundReports:
    """One report thread for the study run, started with the first study that is done."""

    def __init__(self, tracking_uri: str, parent_run_id: str, trials, reports_dir: Path, background: bool = True,
                 busy_cores: int = 1):
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self.trials, self.reports_dir = trials, Path(reports_dir)
        # When this process trains (--jobs 1), a report thread would take the GIL from the
        # training loop and slow it down more than it gains: the reports then wait for the end.
        self.background = background
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: dict[str, Future] = {}
        from dlbench.report.painter import Painter, spare_processes

        self.painter = Painter(spare_processes(busy_cores), warm=True)  # the cores the training leaves

    def submit(self, study: str, now: bool = False) -> None:
        if study in self._jobs or not (self.background or now):
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlbench-report")
        study_trials = [t for t in self.trials if t.study == study]
        self._jobs[study] = self._pool.submit(_build, self.tracking_uri, self.parent_run_id, str(self.reports_dir),
                                              study, study_trials, self.painter)

    def training_done(self) -> None:
        """The training workers have stopped: a large study's figures may use every core."""
        from dlbench.report.painter import spare_processes

        self.painter.grow(spare_processes())

    def wait(self, studies: list[str], stream: TextIO) -> list[Path]:
        """Every study's report folder, in ``studies`` order (submitting those not yet done).
        A failure loses no result: it says how to rebuild the report."""
        for study in studies:
            self.submit(study, now=True)
        folders: list[Path] = []
        try:
            for study in studies:
                try:
                    folders += [Path(p) for p in self._jobs[study].result()]
                except Exception:
                    stream.write(f"the report of {study!r} failed; the runs are safe in MLflow. Rebuild it with "
                                 f"`dlbench report --run-id {self.parent_run_id} --tracking-uri {self.tracking_uri} "
                                 f"--study {study}`.\n{traceback.format_exc()}")
        finally:
            self.close(now=False)
        return folders

    def close(self, now: bool = True) -> None:
        """Stop taking reports; ``now`` (Ctrl-C) drops those not started (the one being drawn
        finishes in its thread: figures of finished trials, nothing is lost)."""
        if self._pool is not None:
            self._pool.shutdown(wait=not now, cancel_futures=True)
            self._pool = None
        self.painter.close(now)
