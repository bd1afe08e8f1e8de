"""The strategies that propose a search's next points: grid, random, and Optuna's TPE and GP.

One sampler per stage of a level's search, seeded: asked for points in batches and told each
batch's results in the order it was asked, so the same results give the same next points. That
is what makes a search reproducible and a half-finished one resumable: a re-run asks again,
finds the trials it had asked in the store, tells their stored results and goes on from there.
Optuna is imported only here (and only when a study tunes).
"""

from __future__ import annotations

import math

from dlbench.tuning.space import Param, grid_points

STARTUP_MAX = 10  # Optuna's default: random points before the model guides the search
STARTUP_FRACTION = 4  # ... at most a quarter of the budget, so that a small budget is guided too


class GridSampler:
    """Every point of the grid, in the study file's order."""

    def __init__(self, strategy: str, space: tuple[Param, ...], seed: int, higher_is_better: bool, budget: int):
        self._points = grid_points(space)
        self._next = 0

    def ask(self) -> tuple[object, dict]:
        point = self._points[self._next]
        self._next += 1
        return None, point

    def tell(self, handle, value: float | None, state: str, curve: list[float]) -> None:
        """A grid does not learn from results."""


class OptunaSampler:
    """Random search (Optuna's RandomSampler), TPE (Bergstra et al. 2011) or a Gaussian-process
    sampler, through an in-memory Optuna study: ``ask`` returns (handle, point), ``tell`` the
    trial's objective (or its state when it has none: pruned, failed)."""

    def __init__(self, strategy: str, space: tuple[Param, ...], seed: int, higher_is_better: bool, budget: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # dlbench says what went wrong itself
        startup = max(2, min(STARTUP_MAX, budget // STARTUP_FRACTION))
        if strategy == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        elif strategy == "tpe":
            # constant_liar: trials asked together (a batch) spread out instead of piling on one point
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
        else:
            sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        self._optuna = optuna
        self._space = space
        self._study = optuna.create_study(direction="maximize" if higher_is_better else "minimize", sampler=sampler)
        self._distributions = {p.key: _distribution(optuna, p) for p in space}

    def ask(self) -> tuple[object, dict]:
        trial = self._study.ask(self._distributions)
        point = {}
        for p in self._space:
            value = trial.params[p.key]
            point[p.key] = p.choices[value] if p.kind == "choices" else value  # choices are asked by index
        return trial, point

    def tell(self, handle, value: float | None, state: str, curve: list[float]) -> None:
        """``state``: finished (with ``value``), pruned or diverged (its curve of finite values is
        reported: TPE ranks such trials below every finished one), failed."""
        states = self._optuna.trial.TrialState
        for epoch, v in enumerate(curve):
            if math.isfinite(v):
                handle.report(v, epoch)
        if state == "finished" and value is not None and math.isfinite(value):
            self._study.tell(handle, value)
        elif state in ("pruned", "diverged") and any(math.isfinite(v) for v in curve):
            self._study.tell(handle, state=states.PRUNED)
        else:
            self._study.tell(handle, state=states.FAIL)


def _distribution(optuna, p: Param):
    dists = optuna.distributions
    if p.kind == "choices":
        return dists.CategoricalDistribution(list(range(len(p.choices))))
    if p.kind == "int":
        return dists.IntDistribution(int(p.low), int(p.high), log=p.log)
    return dists.FloatDistribution(p.low, p.high, log=p.kind == "log_uniform")


def make_sampler(strategy: str, space: tuple[Param, ...], seed: int, higher_is_better: bool, budget: int):
    cls = GridSampler if strategy == "grid" else OptunaSampler
    return cls(strategy, space, seed, higher_is_better, budget)
