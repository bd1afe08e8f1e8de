"""The data model every layer shares: a trial (its resolved config, the hashes that identify
it, its level's label) and its result. A leaf module: it imports nothing of dlbench, so the
study file reader, the planner, the executors, the training loop, tracking and reports can all
use it without importing one another.

The same config and seed always have the same ``config_hash``, whichever file or order they
came from; ``group_hash`` is the hash without the seed and names the seeds of one level.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


def level_label(levels: dict[str, str]) -> str:
    """A level's label as runs are named: ``on`` for one factor, ``a=x,b=y`` for several."""
    if len(levels) == 1:
        return next(iter(levels.values()))
    return ",".join(f"{f}={lvl}" for f, lvl in levels.items())


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
    # a trial of a tuned level's search (dlbench/tuning/search.py): a tuning trial or a final one
    tuning: object = field(default=None, compare=False, repr=False)
    # a tuning trial's pruning rule (dlbench/tuning/pruning.py), asked by the training loop
    prune: object = field(default=None, compare=False, repr=False)

    @property
    def level(self) -> str:
        """The level label: the level name for one factor, ``a=x,b=y`` for several."""
        return level_label(self.levels)

    @property
    def run_name(self) -> str:
        if self.is_tuning:
            return f"{self.study}/{self.level}/tune={self.tuning.number}"
        return f"{self.study}/{self.level}/seed={self.seed}"

    @property
    def is_tuning(self) -> bool:
        return self.tuning is not None and self.tuning.role == "tuning"


@dataclass
class TrialResult:
    # "finished", "diverged" (loss became NaN/inf), "failed" (an exception), "interrupted", "pruned"
    # (a tuning trial stopped by its search's pruner)
    status: str
    epochs_run: int = 0
    final: dict[str, float] = field(default_factory=dict)  # metrics after the last epoch
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch, from 0
    seconds: float = 0.0
    error: str | None = None


def canonical_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: dict) -> str:
    """SHA-256 of the canonical JSON of a resolved config (key order and int/float spelling
    do not matter: resolution made every option explicit and every float a float)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


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
