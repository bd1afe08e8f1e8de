"""What a study file says about tuning: search spaces, strategies, budgets, stages, pruning.

A study tunes with a ``tune`` table (``[studies.<name>.tune]``); a level may add its own (``on =
{ ..., tune = { space = { ... } } }``), merged over the study's: ``space`` key by key, any other
setting replaced. Every level (cell) of a tuned study gets its own search of the same budget::

    [studies.dropout.tune]
    space = { "optimizer.lr" = { log_uniform = [1e-4, 0.1] } }   # any resolved config key
    strategy = "tpe"          # grid, random, tpe (Optuna's TPE) or gp (Optuna's Gaussian process)
    trials = 16               # per level; or stages = [{ trials = 12, epochs = 5 }, { trials = 4 }]
    metric = "val_accuracy"   # or val_loss: a validation metric, never the test split
    prune = "median"          # or "halving", or a table with options; off by default

This module parses and checks the table (no sampler imported); ``search.py`` runs it.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field

from dlbench.keypaths import toml_key, unknown_keys
from dlbench.errors import choose_one_of
from dlbench.schema import show

STRATEGIES = ["random", "grid", "tpe", "gp"]
OBJECTIVES = {"val_accuracy": True, "val_loss": False}  # the objectives a search may use -> higher is better
TUNE_KEYS = ["space", "strategy", "trials", "stages", "metric", "seed", "batch", "prune"]
STAGE_KEYS = ["trials", "epochs", "narrow"]
KINDS = ["choices", "uniform", "log_uniform", "int"]
PARAM_KEYS = [*KINDS, "log", "points"]
# Pruners and their options with defaults: a trial stops when it is behind the others at an epoch
PRUNERS = {
    # Optuna's MedianPruner: its best value so far is worse than the median of the earlier
    # trials' values at the same epoch (from ``warmup_epochs`` on, once ``min_trials`` have finished)
    "median": {"warmup_epochs": 2, "min_trials": 4},
    # asynchronous successive halving: at epochs min_epochs * reduction^k only the best
    # 1/reduction of the trials that reached that epoch go on
    "halving": {"min_epochs": 1, "reduction": 3},
}
DEFAULT_STRATEGY = "random"
DEFAULT_BATCH = 4  # trials of one level's search that run before it sees their results (tpe, gp, pruning)
DEFAULT_NARROW = 0.25  # a later stage searches this fraction of the range around the best so far
MAX_GRID = 10_000
EDGE = 0.05  # a chosen value this close to a bound (fraction of the width) is on the space's edge
EXAMPLE = '"optimizer.lr" = { log_uniform = [1e-4, 0.1] }'


@dataclass(frozen=True)
class Param:
    """One dimension of a search space: a config key and the values it may take."""

    key: str
    kind: str  # choices, uniform, log_uniform, int
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple = ()
    log: bool = False  # int: sampled on a log scale (log_uniform always is)
    points: int | None = None  # grid search: values of a range, evenly spaced (log-spaced when log)

    @property
    def is_log(self) -> bool:
        return self.kind == "log_uniform" or (self.kind == "int" and self.log)

    def grid(self) -> list:
        """The values a grid search takes (the ``points`` of a range; every integer of an int range)."""
        if self.kind == "choices":
            return list(self.choices)
        if self.kind == "int" and self.points is None:
            return list(range(int(self.low), int(self.high) + 1))
        n = self.points
        if self.is_log:
            lo, hi = math.log(self.low), math.log(self.high)
            values = [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
        else:
            values = [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]
        values[0], values[-1] = self.low, self.high  # exactly the bounds, not exp(log(x))
        if self.kind == "int":
            return list(dict.fromkeys(int(round(v)) for v in values))
        return values

    def narrowed(self, best, fraction: float) -> Param:
        """The range around ``best`` that is ``fraction`` of this one's width (in log space for a
        log range), moved inside the bounds; choices stay as they are."""
        if self.kind == "choices":
            return self
        to, back = (math.log, math.exp) if self.is_log else (float, float)
        lo, hi, center = to(self.low), to(self.high), to(best)
        half = (hi - lo) * fraction / 2
        start = min(max(center - half, lo), hi - 2 * half)
        new_low, new_high = back(start), back(start + 2 * half)
        if self.kind == "int":
            new_low, new_high = max(int(self.low), math.floor(new_low)), min(int(self.high), math.ceil(new_high))
            new_high = max(new_high, new_low)
        else:
            new_low, new_high = max(self.low, new_low), min(self.high, new_high)
        return Param(self.key, self.kind, new_low, new_high, (), self.log, self.points)

    def edge(self, value) -> str | None:
        """``low`` or ``high`` when ``value`` lies within EDGE of the width from that bound."""
        if self.kind == "choices" or not isinstance(value, (int, float)):
            return None
        to = math.log if self.is_log else float
        lo, hi, v = to(self.low), to(self.high), to(value)
        margin = (hi - lo) * EDGE
        if v <= lo + margin:
            return "low"
        if v >= hi - margin:
            return "high"
        return None

    def describe(self) -> str:
        if self.kind == "choices":
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        name = {"uniform": "uniform", "log_uniform": "log-uniform", "int": "integers"}[self.kind]
        log = " (log scale)" if self.kind == "int" and self.log else ""
        return f"{name} [{self.low:g}, {self.high:g}]{log}"

    @classmethod
    def from_json(cls, key: str, spec: dict) -> Param:
        """The inverse of :meth:`to_json` (the report reads spaces back from the runs' tags)."""
        if spec.get("kind") == "choices":
            return cls(key, "choices", choices=tuple(spec.get("choices", ())))
        return cls(key, spec["kind"], spec["low"], spec["high"], (), bool(spec.get("log")) and spec["kind"] == "int",
                   spec.get("points"))

    def to_json(self) -> dict:
        out: dict = {"kind": self.kind}
        if self.kind == "choices":
            out["choices"] = list(self.choices)
        else:
            out |= {"low": self.low, "high": self.high, "log": self.is_log}
        if self.points is not None:
            out["points"] = self.points
        return out


@dataclass(frozen=True)
class Stage:
    trials: int
    epochs: int | None = None  # None: the level's own
    narrow: float = DEFAULT_NARROW  # of the previous stage's range, around its best (not for the first)


@dataclass(frozen=True)
class Pruning:
    name: str  # median, halving
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TuneSpec:
    """A parsed ``tune`` table (of a study, with a level's merged in)."""

    space: tuple[Param, ...]
    strategy: str
    stages: tuple[Stage, ...]
    metric: str = "val_accuracy"
    seed: int = 0
    batch: int = DEFAULT_BATCH
    pruning: Pruning | None = None

    @property
    def budget(self) -> int:
        return sum(s.trials for s in self.stages)

    @property
    def higher_is_better(self) -> bool:
        return OBJECTIVES[self.metric]

    def space_json(self) -> dict:
        return {p.key: p.to_json() for p in self.space}

    def to_json(self) -> dict:
        """Everything that decides which trials the search runs (its identity, with the level's config)."""
        return {"space": self.space_json(), "strategy": self.strategy, "metric": self.metric, "seed": self.seed,
                "batch": self.batch, "stages": [vars(s) for s in self.stages],
                "pruning": vars(self.pruning) if self.pruning else None}

    def describe(self) -> str:
        stages = " then ".join(f"{s.trials} trials" + (f" of {s.epochs} epochs" if s.epochs else "")
                               + (f" narrowed to {s.narrow:g}" if i else "") for i, s in enumerate(self.stages))
        prune = f", pruning {self.pruning.name}" if self.pruning else ""
        return f"{self.strategy} search, {stages} (batch {self.batch}) on {self.metric}{prune}"


def merge_tune(base: dict | None, override: dict | None) -> dict | None:
    """A level's tune table over its study's: ``space`` key by key, the rest replaced."""
    if not override:
        return base
    if not base:
        return dict(override)
    out = {**base, **override}
    if isinstance(base.get("space"), dict) and isinstance(override.get("space"), dict):
        out["space"] = {**base["space"], **override["space"]}
    return out


def parse_tune(raw, where: str, problems: list[str]) -> TuneSpec | None:
    """Check a tune table (``where``: its key path); None and ``problems`` filled when it is wrong."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a table such as {{ space = {{ {EXAMPLE} }}, trials = 16 }}, got {show(raw)}")
        return None
    before = len(problems)
    unknown_keys(raw, TUNE_KEYS, f"{where}.", problems)
    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        problems.append(f"{where}.space: a search space is a table of config keys, e.g. space = {{ {EXAMPLE} }}; "
                        f"got {show(space_raw) if space_raw is not None else 'nothing'}")
        space_raw = {}
    space = tuple(p for key, spec in space_raw.items()
                  if (p := _param(key, spec, f"{where}.space.{toml_key(key)}", problems)) is not None)
    strategy = raw.get("strategy", DEFAULT_STRATEGY)
    if strategy not in STRATEGIES:
        problems.append(f"{where}.strategy: unknown strategy {show(strategy)}; {choose_one_of(str(strategy), STRATEGIES)}")
        strategy = DEFAULT_STRATEGY
    metric = raw.get("metric", "val_accuracy")
    if metric not in OBJECTIVES:
        why = " (tuning on the test split would make the study's test comparison optimistic)" \
            if isinstance(metric, str) and metric.startswith("test") else ""
        problems.append(f"{where}.metric: {show(metric)} cannot be a tuning objective{why}; "
                        f"use a validation metric: {' or '.join(OBJECTIVES)}")
        metric = "val_accuracy"
    seed = _integer(raw.get("seed", 0), f"{where}.seed", problems, 0, 2**32 - 1, "a sampler seed")
    batch = _integer(raw.get("batch", DEFAULT_BATCH), f"{where}.batch", problems, 1, 10_000,
                     "how many trials of a level run before its search sees their results")
    grid = _grid_size(space, strategy, where, problems) if strategy == "grid" else None
    stages = _stages(raw, grid, where, problems)
    pruning = _pruning(raw.get("prune", "none"), f"{where}.prune", problems)
    if len(problems) > before:
        return None
    return TuneSpec(space, strategy, stages, metric, seed, batch, pruning)


def _param(key, spec, where: str, problems: list[str]) -> Param | None:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        problems.append(f"{where}: not a config key; name one as the resolved config has it, such as optimizer.lr")
        return None
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a list of choices or a table such as {{ log_uniform = [1e-4, 0.1] }}, "
                        f"{{ uniform = [0.0, 0.5] }}, {{ int = [32, 512] }} or {{ choices = [...] }}; got {show(spec)}")
        return None
    unknown_keys(spec, PARAM_KEYS, f"{where}.", problems)
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        problems.append(f"{where}: give exactly one of {', '.join(KINDS)} (got {', '.join(kinds) or 'none'})")
        return None
    kind = kinds[0]
    value = spec[kind]
    log, points = spec.get("log", False), spec.get("points")
    if not isinstance(log, bool) or (log and kind != "int"):
        problems.append(f"{where}.log: only an int range takes log = true (log_uniform is the log-scale float range)")
        return None
    if points is not None and (kind == "choices" or not isinstance(points, int) or isinstance(points, bool)
                               or not 2 <= points <= 1000):
        problems.append(f"{where}.points: the number of grid values of a range, an integer from 2 to 1000 "
                        f"(not for choices); got {show(points)}")
        return None
    if kind == "choices":
        if not isinstance(value, list) or not value:
            problems.append(f"{where}.choices: expected a non-empty list of values, got {show(value)}")
            return None
        return Param(key, kind, choices=tuple(value))
    number = (int,) if kind == "int" else (int, float)
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, number) and not isinstance(v, bool) for v in value)):
        what = "two integers" if kind == "int" else "two numbers"
        problems.append(f"{where}.{kind}: expected [low, high], {what}, got {show(value)}")
        return None
    low, high = value
    if not all(math.isfinite(v) for v in value):
        problems.append(f"{where}.{kind}: the bounds must be finite numbers, got {show(value)}")
        return None
    if not low < high:
        problems.append(f"{where}.{kind}: an empty range [{low}, {high}]: low must be below high "
                        "(a single value is a setting, not a search: set it in the level)")
        return None
    if (kind == "log_uniform" or log) and low <= 0:
        problems.append(f"{where}.{kind}: a log scale needs positive bounds, got [{low}, {high}]; "
                        f"use uniform for a range through 0")
        return None
    if kind != "int":
        low, high = float(low), float(high)
    return Param(key, kind, low, high, (), log, points)


def _grid_size(space: tuple[Param, ...], strategy: str, where: str, problems: list[str]) -> int | None:
    size = 1
    for p in space:
        if p.kind in ("uniform", "log_uniform") and p.points is None:
            problems.append(f"{where}.space: grid search over the range {p.key} needs its number of values, e.g. "
                            f"{{ {p.kind} = [{p.low:g}, {p.high:g}], points = 4 }}")
            return None
        size *= len(p.grid())
    if size > MAX_GRID:
        problems.append(f"{where}.space: a grid of {size} points per level; at most {MAX_GRID} (use random or tpe)")
        return None
    return size


def _stages(raw: dict, grid: int | None, where: str, problems: list[str]) -> tuple[Stage, ...]:
    if "stages" in raw and "trials" in raw:
        problems.append(f"{where}: give trials (one stage) or stages (each with its trials), not both")
        return ()
    if "stages" not in raw:
        trials = raw.get("trials", grid)
        if trials is None:
            problems.append(f"{where}.trials: missing: the budget of each level's search, e.g. trials = 16")
            return ()
        if grid is not None and trials != grid:
            problems.append(f"{where}.trials: the grid has {grid} points per level: trials = {grid} (or leave it out)")
            return ()
        return (Stage(_integer(trials, f"{where}.trials", problems, 1, 100_000, "the number of trials per level")),)
    stages_raw = raw["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        problems.append(f"{where}.stages: expected a list of stages such as [{{ trials = 12, epochs = 5 }}, "
                        f"{{ trials = 4 }}], got {show(stages_raw)}")
        return ()
    stages = []
    for i, st in enumerate(stages_raw):
        path = f"{where}.stages[{i}]"
        if not isinstance(st, dict):
            problems.append(f"{path}: expected a table such as {{ trials = 12, epochs = 5 }}, got {show(st)}")
            continue
        unknown_keys(st, STAGE_KEYS, f"{path}.", problems)
        trials = st.get("trials", grid)
        if trials is None:
            problems.append(f"{path}.trials: missing: how many trials this stage runs per level")
            continue
        if grid is not None and trials != grid:
            problems.append(f"{path}.trials: the grid has {grid} points per level: trials = {grid} (or leave it out)")
            continue
        trials = _integer(trials, f"{path}.trials", problems, 1, 100_000, "the number of trials per level")
        epochs = st.get("epochs")
        if epochs is not None:
            epochs = _integer(epochs, f"{path}.epochs", problems, 1, 1_000_000, "the epochs of this stage's trials")
        narrow = st.get("narrow", DEFAULT_NARROW)
        if i == 0 and "narrow" in st:
            problems.append(f"{path}.narrow: the first stage searches the whole space; narrow applies to later stages")
        elif not isinstance(narrow, (int, float)) or isinstance(narrow, bool) or not 0 < narrow <= 1:
            problems.append(f"{path}.narrow: the fraction of the range kept around the best, in (0, 1]; got {show(narrow)}")
            narrow = DEFAULT_NARROW
        stages.append(Stage(trials, epochs, float(narrow)))
    return tuple(stages)


def _pruning(raw, where: str, problems: list[str]) -> Pruning | None:
    if raw in ("none", False):
        return None
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or raw.get("name") not in PRUNERS:
        name = raw.get("name") if isinstance(raw, dict) else raw
        problems.append(f"{where}: unknown pruner {show(name)}; choose one of: none, {', '.join(PRUNERS)} "
                        f"(or a table such as {{ name = \"median\", warmup_epochs = 2 }})")
        return None
    name = raw["name"]
    options = dict(PRUNERS[name])
    for k, v in raw.items():
        if k == "name":
            continue
        if k not in options:
            problems.append(f"{where}.{k}: pruner {name!r} has no option {k!r}; {choose_one_of(k, list(options))}")
            continue
        lowest = 2 if k == "reduction" else (0 if k == "warmup_epochs" else 1)
        options[k] = _integer(v, f"{where}.{k}", problems, lowest, 1_000_000, f"pruner option {k}")
    return Pruning(name, options)


def _integer(value, where: str, problems: list[str], low: int, high: int, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    problems.append(f"{where}: {what}: expected an integer from {low} to {high}, got {show(value)}")
    return low


def grid_points(space: tuple[Param, ...]) -> list[dict]:
    """Every point of a grid, the first key varying slowest (the order of the study file)."""
    keys = [p.key for p in space]
    return [dict(zip(keys, values)) for values in itertools.product(*[p.grid() for p in space])]
