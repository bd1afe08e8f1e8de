"""Running one unit of work (a trial, or a stack of trials) in this process.

:func:`execute` is what every pool runs for each unit it is handed (in this process, a worker
process or a Ray task): it loads the data, trains, and ends every
member exactly once through ``dlbench_trial_end``: finished, diverged, failed (with the
traceback) or, on Ctrl-C, interrupted.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch

from dlbench.datacache import DataCache
from dlbench.paths import folder_name
from dlbench.planning import Work
from dlbench.train import Checkpoints, run_trial
from dlbench.train_stack import CannotStack, run_stack
from dlbench.trial import Trial, TrialResult


def checkpoint_path(checkpoint_dir: Path, work: Work) -> Path:
    """Where a unit's epoch-end checkpoint lives: one file per trial (its study and config hash:
    two studies may hold the same config, trained at once by two workers), or per stack."""
    trial = work.members[0]
    name = f"stack-{work.stack_id}.pt" if work.stacked else f"{folder_name(trial.study)}-{trial.config_hash}.pt"
    return Path(checkpoint_dir) / name


def execute(work: Work, registry, hook, cache: DataCache, device: torch.device, checkpoint_dir: Path | None,
            checkpoint_every: float = 10.0, cuda_graphs: str = "auto") -> list[tuple[Trial, TrialResult]]:
    """Train ``work``; return each member's result (``dlbench_trial_end`` already called).
    ``cuda_graphs``: whether a stack's steps replay from CUDA graphs (``step_graph.py``)."""
    ended: dict[int, tuple[Trial, TrialResult]] = {}

    def finish(trial: Trial, result: TrialResult) -> None:
        ended[trial.index] = (trial, result)
        hook.dlbench_trial_end(trial=trial, result=result)

    def checkpoints(unit: Work) -> Checkpoints | None:
        return Checkpoints(checkpoint_path(checkpoint_dir, unit), checkpoint_every) if checkpoint_dir else None

    try:
        data = cache.for_config(work.members[0].config, registry, device)  # preprocessing applied
        if work.stacked:
            try:
                run_stack(work, registry, data, device, hook, finish, checkpoints(work), cuda_graphs)
            except CannotStack:  # found when the models were built, before any hook: one at a time
                for trial in [t for t in work.members if t.index not in ended]:  # a failed build ended already
                    alone = Work((trial,), work.stack_id)
                    finish(trial, run_trial(trial, registry, data, device, hook, checkpoints(alone)))
        else:
            (trial,) = work.members
            finish(trial, run_trial(trial, registry, data, device, hook, checkpoints(work)))
    except KeyboardInterrupt:  # Ctrl-C: the trials' runs are closed as KILLED, resumable
        for trial in work.members:
            if trial.index not in ended:
                finish(trial, TrialResult(status="interrupted"))
        raise
    except Exception as exc:
        error = "".join(traceback.format_exception(exc))
        for trial in work.members:
            if trial.index not in ended:
                finish(trial, TrialResult(status="failed", error=error))
    return [ended[t.index] for t in work.members]
