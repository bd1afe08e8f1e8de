"""Expansion of a study file into trials: levels (full factorial across factors) x seeds.

Every trial carries its fully resolved config (the seed included) and a stable hash of it, so
the same config and seed always have the same ``config_hash``, whichever file or order they
came from; ``group_hash`` is the hash without the seed and names the seeds of one level.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from dlbench.config import Study, StudyFile, UnknownComponent, merge, resolve, toml_key
from dlbench.errors import ConfigError, choose_one_of
from dlbench.trial import Trial, canonical_json, config_hash, flatten, level_label  # noqa: F401  (re-exported)
from dlbench.tuning.search import Search, check_space
from dlbench.tuning.space import merge_tune, parse_tune


def first_of_each_config(trials: list[Trial]) -> dict[int, Trial]:
    """The one rule for "the same trial" within a study file: for each trial whose config hash an
    earlier trial of ``trials`` has, that earlier (first) trial, by index. Identical trials train
    once, as the first; each other one is recorded under its own study from that run."""
    first: dict[str, Trial] = {}
    same: dict[int, Trial] = {}
    for trial in trials:
        if trial.is_tuning:
            continue
        if trial.config_hash in first:
            same[trial.index] = first[trial.config_hash]
        else:
            first[trial.config_hash] = trial
    return same


def identical_levels(trials: list[Trial]) -> list[tuple[str, str, int]]:
    """Levels that resolve to the same configuration as another level (of the same study or of
    another one in the file): ``("dropout/off", "dropout/p=0", seeds in common)``, each pair once,
    in file order."""
    by_group: dict[str, list[str]] = {}
    seeds: dict[str, set[int]] = {}
    for trial in trials:
        if trial.is_tuning:
            continue
        name = f"{trial.study}/{trial.level}"
        members = by_group.setdefault(trial.group_hash, [])
        if name not in members:
            members.append(name)
        seeds.setdefault(name, set()).add(trial.seed)
    return [(a, b, len(seeds[a] & seeds[b])) for names in by_group.values()
            for i, a in enumerate(names) for b in names[i + 1:]]


@dataclass(frozen=True)
class Plan:
    """A study file expanded: the trials known now, and the searches of tuned levels, whose
    trials (tuning trials, then the best values with the study's seeds) come as they run."""

    trials: list[Trial]
    searches: list = field(default_factory=list)  # dlbench.tuning.search.Search
    # each distinct config's model: its parameter count, by group hash (``preflight.Checked.sizes``)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.trials) + sum(s.total for s in self.searches)

    def to_check(self) -> list[Trial]:
        """What the preflight builds: the trials, and the low and high corner of each search's space."""
        return self.trials + [probe for search in self.searches for probe in search.probes()]

    @property
    def studies(self) -> list[str]:
        """The studies it runs, in file order."""
        return list(dict.fromkeys([t.study for t in self.trials] + [s.study.name for s in self.searches]))


def expand(study_file: StudyFile, registry, only: list[str] | None = None) -> list[Trial]:
    """The trials of the file (or of the studies named in ``only``) known before anything runs,
    in file order: every trial of a study that does not tune (see :func:`expand_plan`)."""
    return expand_plan(study_file, registry, only).trials


def expand_plan(study_file: StudyFile, registry, only: list[str] | None = None) -> Plan:
    """All trials of the file (or of the studies named in ``only``) and the searches of its tuned
    levels, numbered in file order."""
    problems: list[str] = []
    studies = list(study_file.studies)
    if only:
        names = [s.name for s in studies]
        unknown = [o for o in only if o not in names]
        if unknown:
            raise ConfigError(str(study_file.path), [f"--study {u!r}: no such study; {choose_one_of(u, names)}"
                                                     for u in unknown])
        studies = [s for s in studies if s.name in only]
    plan = Plan([], [])
    for study in studies:
        _expand_study(study_file, study, registry, problems, plan)
    if problems:
        raise ConfigError(str(study_file.path), explain_unknown(list(dict.fromkeys(problems)), registry))  # dedupe
    return plan


def explain_unknown(problems: list[str], registry) -> list[str]:
    """``problems`` with the first unknown component's message telling where components come
    from (the built-ins, the entry-point group, the local folder searched, the local files that
    failed to load); the others name only the nearest names and the files that failed."""
    out, told = [], False
    for problem in problems:
        if isinstance(problem, UnknownComponent) and not told:
            problem, told = problem.told_in_full(), True
        out.append(str(problem))
    return out


def _expand_study(sf: StudyFile, study: Study, registry, problems: list[str], plan: Plan) -> None:
    base = merge(sf.baseline, study.overrides)
    base_where = sources(study.overrides, f"studies.{study.name}.baseline", {})
    for combo in itertools.product(*[f.level_names for f in study.factors]):
        levels = dict(zip([f.name for f in study.factors], combo))
        config, where, tune, tune_where = base, dict(base_where), study.tune, f"studies.{toml_key(study.name)}.tune"
        for factor, lname in zip(study.factors, combo):
            over = factor.levels[lname]
            config = merge(config, over)
            prefix = f"studies.{study.name}.levels" if len(study.factors) == 1 and factor.name == study.name \
                else f"studies.{study.name}.factors.{factor.name}"
            where = sources(over, f"{prefix}.{lname}", where)
            if lname in factor.tunes:
                tune, tune_where = merge_tune(tune, factor.tunes[lname]), f"{prefix}.{toml_key(lname)}.tune"
        resolved, found = resolve(config, registry, where)
        problems.extend(found)
        if found:
            continue
        start = plan.total + 1
        if tune is not None:  # checked when the file was read: no problem left but the keys' own
            spec = parse_tune(tune, tune_where, problems)
            if spec is None:
                continue
            found = check_space(spec, config, where, registry, tune_where, study.label(levels))
            problems.extend(found)
            if not found:
                plan.searches.append(Search(study, levels, config, where, spec, registry, tune_where, start))
            continue
        group = config_hash(resolved)
        for i, seed in enumerate(study.seeds):
            full = {**resolved, "seed": seed}
            plan.trials.append(Trial(start + i, study.name, levels, seed, full, config_hash(full), group, where,
                                     label=study.label(levels)))


def sources(override: dict, path: str, where: dict[str, str]) -> dict[str, str]:
    """Update ``where`` (which key path last set each setting) with what ``override`` sets.

    A table merged into the baseline's sets only its own options (``optimizer.momentum``); a
    value that replaces the setting (a scalar, a list, a table naming another plugin) sets it
    whole, so an error in an option the override did not write still points at the baseline.
    """
    where = dict(where)
    for key, value in override.items():
        if isinstance(value, dict) and "name" not in value:
            where.update({f"{key}.{option}": path for option in value})
        else:
            where = {k: v for k, v in where.items() if not k.startswith(f"{key}.")}
            where[key] = path
    return where
