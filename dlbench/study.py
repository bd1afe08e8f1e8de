"""Expansion of a study file into trials: levels (full factorial across factors) x seeds.

Every trial carries its fully resolved config (the seed included) and a stable hash of it, so
the same config and seed always have the same ``config_hash``, whichever file or order they
came from; ``group_hash`` is the hash without the seed and names the seeds of one level.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field

from dlbench.config import Study, StudyFile, merge, resolve
from dlbench.errors import ConfigError, choose_one_of


@dataclass(frozen=True)
class Trial:
    index: int  # 1-based position in the expanded study file
    study: str
    levels: dict[str, str]  # factor -> level name
    seed: int
    config: dict  # fully resolved, includes "seed"
    config_hash: str
    group_hash: str
    # the key path of the study file that last set each setting (see ``sources``), so a problem
    # found after expansion (the preflight) points at the line the user wrote
    where: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def level(self) -> str:
        """The level label: the level name for one factor, ``a=x,b=y`` for several."""
        if len(self.levels) == 1:
            return next(iter(self.levels.values()))
        return ",".join(f"{f}={lvl}" for f, lvl in self.levels.items())

    @property
    def run_name(self) -> str:
        return f"{self.study}/{self.level}/seed={self.seed}"


def canonical_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: dict) -> str:
    """SHA-256 of the canonical JSON of a resolved config (key order and int/float spelling
    do not matter: resolution made every option explicit and every float a float)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def expand(study_file: StudyFile, registry, only: list[str] | None = None) -> list[Trial]:
    """All trials of the file (or of the studies named in ``only``), in file order."""
    problems: list[str] = []
    studies = list(study_file.studies)
    if only:
        names = [s.name for s in studies]
        unknown = [o for o in only if o not in names]
        if unknown:
            raise ConfigError(str(study_file.path), [f"--study {u!r}: no such study; {choose_one_of(u, names)}"
                                                     for u in unknown])
        studies = [s for s in studies if s.name in only]
    trials: list[Trial] = []
    for study in studies:
        trials.extend(_expand_study(study_file, study, registry, problems, start=len(trials) + 1))
    if problems:
        raise ConfigError(str(study_file.path), list(dict.fromkeys(problems)))  # dedupe, keep order
    return trials


def _expand_study(sf: StudyFile, study: Study, registry, problems: list[str], start: int) -> list[Trial]:
    base = merge(sf.baseline, study.overrides)
    base_where = sources(study.overrides, f"studies.{study.name}.baseline", {})
    trials = []
    for combo in itertools.product(*[f.level_names for f in study.factors]):
        levels = dict(zip([f.name for f in study.factors], combo))
        config, where = base, dict(base_where)
        for factor, lname in zip(study.factors, combo):
            over = factor.levels[lname]
            config = merge(config, over)
            prefix = f"studies.{study.name}.levels" if len(study.factors) == 1 and factor.name == study.name \
                else f"studies.{study.name}.factors.{factor.name}"
            where = sources(over, f"{prefix}.{lname}", where)
        resolved, found = resolve(config, registry, where)
        problems.extend(found)
        if found:
            continue
        group = config_hash(resolved)
        for seed in study.seeds:
            full = {**resolved, "seed": seed}
            trials.append(Trial(start + len(trials), study.name, levels, seed, full, config_hash(full), group, where))
    return trials


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


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"name": "sgd", "lr": 0.1}}`` -> ``{"optimizer.name": "sgd", "optimizer.lr": "0.1"}``.

    Regularizers are keyed by name (``regularizers.dropout.p_hidden``) so runs line up in a
    comparison table whatever the list order; ``regularizers`` itself lists the names.
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key == "regularizers" and isinstance(value, list) and not prefix:
            out[path] = ",".join(r["name"] for r in value) or "none"
            for r in value:
                out.update(flatten({k: v for k, v in r.items() if k != "name"}, f"{path}.{r['name']}."))
        elif isinstance(value, dict):
            out.update(flatten(value, f"{path}."))
        elif isinstance(value, list):
            out[path] = json.dumps(value)
        else:
            out[path] = str(value).lower() if isinstance(value, bool) else str(value)
    return out
