"""The search of one level (cell) of a tuned study, and the trials it hands the runner.

A search runs its stages one after another; a stage runs its budget in rounds of ``batch``
trials (all at once for a grid or a random search without pruning: those do not learn from
results). A round's results are told to the sampler in the order its trials were asked, once
the whole round has ended, so the points proposed next do not depend on which worker finished
first. When the last stage has ended, the best finished trial's values are trained with the
study's seeds: the *final* trials, which the report compares as it compares any level.

Every tuning trial is a trial like any other (a child run, tracked, checkpointed, stacked with
its round where it can), with its own seed: the n-th integer that is not one of the study's
seeds, so that no tuning run is ever mistaken for one of the final runs.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass, field

from dlbench.config import Study, merge, normalize, resolve, toml_key
from dlbench.errors import ConfigError, choose_one_of
from dlbench.trial import Trial, canonical_json, config_hash, flatten
from dlbench.tuning.pruning import prune_rule
from dlbench.tuning.samplers import make_sampler  # optuna: imported only by the samplers that use it
from dlbench.tuning.space import TuneSpec


@dataclass(frozen=True)
class TuningInfo:
    """What a trial of a search carries: which search, its role (a ``tuning`` trial or a
    ``final`` one), and for a tuning trial its stage, number and the values it was given; for a
    final trial the chosen values and the number of the tuning trial they came from."""

    search: str
    role: str  # tuning, final
    spec: TuneSpec
    stage: int = 0  # 1-based
    number: int = 0  # 1-based, across the stages, in ask order
    params: dict = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        if self.role == "final":
            return {"dlbench.search": self.search, "dlbench.tuned": _json(self.params),
                    "dlbench.tuned_from": str(self.number)}
        return {"dlbench.search": self.search, "dlbench.tuning.stage": str(self.stage),
                "dlbench.tuning.trial": str(self.number), "dlbench.tuning.params": _json(self.params),
                "dlbench.tuning.space": _json(self.spec.space_json()), "dlbench.tuning.metric": self.spec.metric,
                "dlbench.tuning.strategy": self.spec.strategy, "dlbench.tuning.budget": str(self.spec.budget)}


@dataclass
class _Asked:
    trial: Trial
    handle: object
    result: object = None  # TrialResult once it ended


class Search:
    """The tuning of one cell: ``ready()`` hands out the trials that can run now, ``record()``
    takes each one's result. ``first_index`` numbers its trials (tuning trials, then finals)."""

    def __init__(self, study: Study, levels: dict[str, str], config: dict, where: dict[str, str], spec: TuneSpec,
                 registry, tune_where: str, first_index: int = 1):
        self.study, self.levels, self.spec = study, levels, spec
        self.config, self.where, self.registry = config, where, registry
        self.tune_where = tune_where
        self.first_index = first_index
        base, _ = resolve(config, registry, where)
        identity = {"config": base, "tune": spec.to_json(), "seeds": list(study.seeds)}
        self.id = config_hash(json.loads(canonical_json(identity)))[:16]
        self.group_hash = config_hash(base)
        self.seeds = list(itertools.islice((s for s in itertools.count() if s not in set(study.seeds)), spec.budget))
        self.stage = 0  # index into spec.stages
        self.space = spec.space
        self.asked = 0
        self.rounds = 0  # rounds asked so far, over the stages
        self.round: list[_Asked] = []
        self.records: list[tuple[int, int, dict, str, float | None]] = []  # (stage, number, point, state, value)
        self.curves: list[list[float]] = []  # the objective by epoch of the stage's ended trials (pruning)
        self.blocked = False  # a trial of the round will not end in this process (interrupted, elsewhere)
        self.finals: list[Trial] | None = None
        self._sampler = None

    # -- what the runner sees -----------------------------------------------------------------

    @property
    def level(self) -> str:
        return self.study.label(self.levels)

    @property
    def total(self) -> int:
        """Trials this search runs: its budget, then one final trial per seed of the study."""
        return self.spec.budget + len(self.study.seeds)

    def ready(self) -> list[Trial]:
        """The trials to run now: the next round, or the final trials; [] while a round is running."""
        if self.round or self.blocked or self.finals is not None:
            return []
        if self.asked == sum(s.trials for s in self.spec.stages[:self.stage + 1]):
            if self.stage + 1 == len(self.spec.stages):
                self.finals = self._final_trials()
                return list(self.finals)
            self._next_stage()
        stage = self.spec.stages[self.stage]
        left = sum(s.trials for s in self.spec.stages[:self.stage + 1]) - self.asked
        learns = self.spec.strategy in ("tpe", "gp") or self.spec.pruning is not None
        self.rounds += 1
        for _ in range(min(left, self.spec.batch) if learns else left):
            handle, point = self._sampler_of_stage().ask()
            self.asked += 1
            self.round.append(_Asked(self._tuning_trial(point, stage), handle))
        return [a.trial for a in self.round]

    def record(self, trial: Trial, result) -> None:
        """A trial of this search ended (or was found ended in the store)."""
        if trial.tuning.role == "final":
            return
        if result.status == "interrupted":  # resumed by the next run of the study, from its checkpoint
            self.blocked = True
            return
        for asked in self.round:
            if asked.trial.index == trial.index:
                asked.result = result
        if all(a.result is not None for a in self.round):
            for asked in self.round:  # in the order asked: the same results, the same next points
                self._tell(asked)
            self.round = []

    def busy_elsewhere(self, trial: Trial) -> None:
        """Another live process trains ``trial``: its result will not reach this one."""
        self.blocked = True

    def probes(self) -> list[Trial]:
        """Trials the preflight builds before anything runs: the space's low corner and its high
        corner (the first and the last choice), with the first stage's epochs."""
        trials = []
        for end in (0, -1):
            point = {p.key: (p.choices[end] if p.kind == "choices" else (p.low, p.high)[end]) for p in self.spec.space}
            trials.append(self._tuning_trial(point, self.spec.stages[0], number=1))
        return trials

    # -- inside -------------------------------------------------------------------------------

    def _sampler_of_stage(self):
        if self._sampler is None:
            self._sampler = make_sampler(self.spec.strategy, self.space, self.spec.seed + self.stage,
                                         self.spec.higher_is_better, self.spec.stages[self.stage].trials)
        return self._sampler

    def _tell(self, asked: _Asked) -> None:
        result, info = asked.result, asked.trial.tuning
        curve = [row.get(self.spec.metric, math.nan) for row in result.history]
        value = result.final.get(self.spec.metric) if result.status == "finished" else None
        self._sampler_of_stage().tell(asked.handle, value, result.status, curve)
        self.records.append((info.stage, info.number, info.params, result.status, value))
        self.curves.append(curve)

    def _next_stage(self) -> None:
        """Narrow the space around the best of the stage that ended, for the next one."""
        best = self.best()
        self.stage += 1
        self._sampler, self.curves = None, []
        if best is not None:
            narrow = self.spec.stages[self.stage].narrow
            self.space = tuple(p.narrowed(best[1][p.key], narrow) for p in self.space)

    def best(self) -> tuple[int, dict, float] | None:
        """(number, values, objective) of the best finished trial of the current stage (ties: the
        first asked), or None when none finished."""
        stage = self.stage + 1
        done = [(n, point, v) for s, n, point, state, v in self.records
                if s == stage and state == "finished" and v is not None and math.isfinite(v)]
        if not done:
            return None
        sign = -1 if self.spec.higher_is_better else 1
        return min(done, key=lambda r: (sign * r[2], r[0]))

    def best_so_far(self) -> tuple[int, float] | None:
        """(number, objective) of the best finished tuning trial of any stage so far (ties: the
        first asked), or None when none finished: what a running study shows of the search."""
        done = [(n, v) for _, n, _, state, v in self.records if state == "finished" and v is not None and math.isfinite(v)]
        sign = -1 if self.spec.higher_is_better else 1
        return min(done, key=lambda r: (sign * r[1], r[0])) if done else None

    def _tuning_trial(self, point: dict, stage, number: int | None = None) -> Trial:
        config = with_values(self.config, point)
        if stage.epochs is not None:
            config["epochs"] = stage.epochs
        resolved = self._resolved(config, point)
        number = number or self.asked
        seed = self.seeds[number - 1]
        full = {**resolved, "seed": seed}
        info = TuningInfo(self.id, "tuning", self.spec, self.stage + 1, number, point)
        rule = None
        if self.spec.pruning is not None:
            rule = prune_rule(self.spec.pruning, self.spec.metric, self.spec.higher_is_better, self.curves,
                              resolved["epochs"])
        return Trial(self.first_index + number - 1, self.study.name, self.levels, seed, full, config_hash(full),
                     config_hash(resolved), self.where, tuning=info, prune=rule, label=self.level)

    def _final_trials(self) -> list[Trial]:
        best = self.best()
        if best is None:  # every trial of the last stage failed, diverged or was pruned
            return []
        number, point, _ = best
        resolved = self._resolved(with_values(self.config, point), point)
        info = TuningInfo(self.id, "final", self.spec, number=number, params=point)
        first = self.first_index + self.spec.budget
        trials = []
        for i, seed in enumerate(self.study.seeds):
            full = {**resolved, "seed": seed}
            trials.append(Trial(first + i, self.study.name, self.levels, seed, full, config_hash(full),
                                config_hash(resolved), self.where, tuning=info, label=self.level))
        return trials

    def _resolved(self, config: dict, point: dict) -> dict:
        resolved, problems = resolve(config, self.registry, self.where)
        if problems:  # the bounds and every choice were checked at expansion: a value inside a range failed
            raise ConfigError(self.tune_where, [f"{self.tune_where}.space: the values {point} do not fit the "
                                                f"config: {problems[0]}"])
        return resolved


def with_values(config: dict, point: dict) -> dict:
    """``config`` (merged, before resolution) with each key of ``point`` set: ``optimizer.lr``
    sets an option, ``regularizers.dropout.p_hidden`` one of a listed regularizer's,
    ``activation`` a whole setting (a plugin name, or a table)."""
    out = copy.deepcopy(config)
    for key, value in point.items():
        parts = key.split(".")
        if parts[0] in ("regularizers", "preprocessing") and len(parts) >= 3:
            target = next(item for item in out[parts[0]] if item.get("name") == parts[1])
            parts = parts[2:]
        elif len(parts) == 1:
            out = merge(out, normalize({key: copy.deepcopy(value)}))
            continue
        else:
            target = out.setdefault(parts[0], {})
            parts = parts[1:]
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = copy.deepcopy(value)
    return normalize(out)


def check_space(spec: TuneSpec, config: dict, where: dict[str, str], registry, tune_where: str,
                level: str) -> list[str]:
    """Problems of ``spec``'s space for a cell of config ``config``: a key the config does not
    have, a bound or a choice its option does not accept."""
    base, problems = resolve(config, registry, where)
    if problems:
        return []  # the cell's own problems are reported as for any level
    known = set(flatten(base)) | set(base)
    out = []
    if not base["val_fraction"]:
        out.append(f"{tune_where}: tuning on {spec.metric} needs a validation split, but level {level!r} has "
                   f"val_fraction = 0 (set at {where.get('val_fraction', 'baseline')}.val_fraction); give it one, "
                   "such as val_fraction = 0.1: the test split never chooses the values")
    for p in spec.space:
        path = f"{tune_where}.space.{toml_key(p.key)}"
        if p.key not in known or p.key == "seed":
            out.append(f"{path}: {p.key!r} is not a setting of level {level!r}; "
                       f"{choose_one_of(p.key, sorted(k for k in known if k != 'seed'))}")
            continue
        values = list(p.choices) if p.kind == "choices" else [p.low, p.high]
        for value in values:
            _, found = resolve(with_values(config, {p.key: value}), registry, where)
            if found:
                what = "the choice" if p.kind == "choices" else ("the low bound" if value == p.low else "the high bound")
                out.append(f"{path}: {what} {json.dumps(value)} does not fit level {level!r}: {found[0]}")
                break
    return out


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def describe_plan(searches: list[Search]) -> str:
    """The dry run's view of the searches: spaces, strategies, budgets, stages, trials in total."""
    lines = []
    for study in dict.fromkeys(s.study.name for s in searches):
        group = [s for s in searches if s.study.name == study]
        lines.append(f"study {study!r}: tuned, {len(group)} level(s), each its own search:")
        for s in group:
            lines.append(f"  {s.level}: {s.spec.describe()}; {s.spec.budget} tuning trials, then the best "
                         f"with {len(s.study.seeds)} seed(s) = {s.total} trials")
            for p in s.spec.space:
                lines.append(f"    {p.key}: {p.describe()}")
        budgets = {s.spec.budget for s in group}
        if len(budgets) > 1:
            lines.append(f"  unequal budgets across levels: {', '.join(f'{s.level}={s.spec.budget}' for s in group)}")
    total = sum(s.total for s in searches)
    lines.append(f"{sum(s.spec.budget for s in searches)} tuning trials and "
                 f"{sum(len(s.study.seeds) for s in searches)} final trials in {len(searches)} searches ({total} in all)")
    return "\n".join(lines)
