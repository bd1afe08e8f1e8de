"""The data model every layer shares: a trial (its resolved config, the hashes that identify
it, its level's label), what the training loop tells observers as it starts (``TrialInfo``) and
its result. A leaf module: it imports nothing of dlbench (nor torch), so the study file reader,
the planner, the executors, the training loop, tracking and reports can all use it without
importing one another.

The same config and seed always have the same ``config_hash``, whichever file or order they
came from; ``group_hash`` is the hash without the seed and names the seeds of one level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


def level_label(levels: dict[str, str], names: dict[str, list[str]] | None = None) -> str:
    """A level's label, as runs, groups, reports and the terminal show it: the level name for one
    factor (``on``); for several, each factor's level name, alone where it says which factor it
    belongs to, else ``factor=name`` (``relu, depth=8``). A name stands alone when ``names`` (each
    factor's level names in the study) hold it once and it is no number; without ``names``, every
    one reads ``factor=name`` (``activation=relu, depth=8``)."""
    if len(levels) == 1:
        return next(iter(levels.values()))
    counts = Counter(n for level_names in (names or {}).values() for n in set(level_names))
    return ", ".join(lvl if counts[lvl] == 1 and _speaks_for_itself(lvl) else f"{f}={lvl}"
                     for f, lvl in levels.items())


def _speaks_for_itself(name: str) -> bool:
    try:
        float(name)
    except ValueError:
        return "=" not in name and "," not in name
    return False  # a bare number names no factor


def trial_key(study: str, levels: dict[str, str], last: str) -> str:
    """A trial's identity in its study run (the ``dlbench.trial`` tag), spelled as run names were
    until runs were named by their label: ``dropout/on/seed=0``, ``act/activation=relu,depth=8/tune=3``.
    It never changes, so a study resumes, skips and reports the runs of any earlier dlbench."""
    level = next(iter(levels.values())) if len(levels) == 1 else ",".join(f"{f}={lvl}" for f, lvl in levels.items())
    return f"{study}/{level}/{last}"


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
    # the level's label among its study's levels (``level_label`` with the study's level names)
    label: str = field(default="", compare=False, repr=False)

    @property
    def level(self) -> str:
        """The level's label: ``on`` for one factor, ``relu, depth=8`` for several."""
        return self.label or level_label(self.levels)

    @property
    def run_name(self) -> str:
        """The trial's MLflow run name: its level and seed (``relu, depth=8, seed=2``), or for a
        tuning trial its number in the search (``on, tune=3``). The study is the run's ``dlbench.study``."""
        return f"{self.level}, {self._last}"

    @property
    def title(self) -> str:
        """The trial as the terminal names it: its study, then its run name (``act/relu, depth=8, seed=2``)."""
        return f"{self.study}/{self.run_name}"

    @property
    def key(self) -> str:
        """The trial's identity in its study run (``trial_key``): the same in every dlbench version."""
        return trial_key(self.study, self.levels, self._last)

    @property
    def _last(self) -> str:
        return f"tune={self.tuning.number}" if self.is_tuning else f"seed={self.seed}"

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


class FieldMapping(Mapping):
    """A frozen dataclass that reads as a read-only mapping of its fields too (``x["name"]``,
    ``x.get``, ``keys``, ``in``, iteration, ``==`` with a dict), for code written when it was a
    dict. The fields named in ``ABSENT_WHEN_NONE`` are no keys while they are None (the dict had
    no such key then). ``x | {"field": value}`` is a copy with those fields replaced (``a_dict | x``
    a dict)."""

    ABSENT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    def _names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)
                if not (f.name in self.ABSENT_WHEN_NONE and getattr(self, f.name) is None)]

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __or__(self, other):
        if not isinstance(other, Mapping):
            return NotImplemented
        names = {f.name for f in dataclasses.fields(self)}
        unknown = [k for k in other if k not in names]
        if unknown:
            raise KeyError(f"{type(self).__name__} has no field {unknown[0]!r} "
                           f"(its fields: {', '.join(sorted(names))})")
        return dataclasses.replace(self, **other)

    def __ror__(self, other):
        """``a_dict | x``: a dict, as with two dicts."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return {**other, **self}

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (nested ones too): for JSON."""
        return {k: v.as_dict() if isinstance(v, FieldMapping) else v for k, v in self.items()}


@dataclass(frozen=True, eq=False)  # eq: a mapping's (Mapping.__eq__), so it equals the dict it was
class StackInfo(FieldMapping):
    """A stack member's ``TrialInfo.stack``: the stack it trains in."""

    id: str  # the stack's id (it names the stack's checkpoint; the dlbench.stack_id tag)
    size: int  # members at the start (members whose build failed included)
    member: int  # this trial's position among ``members``
    members: list[dict]  # every member's resolved config, in order (the run's stack.json)
    cuda_graphs: bool  # whether its training steps replay from CUDA graphs
    stacked_init: bool  # members sharing an initializer with a stacked form initialized at once


@dataclass(frozen=True, eq=False)
class TrialInfo(FieldMapping):
    """What ``dlbench_trial_start`` tells observers about a trial that is about to train (see
    ``hookspecs.py``). Read it by attribute (``info.num_params``) or as the dict it used to be
    (``info["device"]``, ``info.get("stack")``); it pickles (it crosses process queues and Ray)."""

    ABSENT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("stack", "environment")

    device: str  # the torch device it trains on: "cpu", "cuda:0"
    dataset_hash: str  # SHA-256 of the dataset's arrays
    dataset: str  # the dataset's registered name
    num_classes: int
    dataset_source: str  # where the arrays came from: a prepared folder, or "generated"
    preprocessing: tuple[str, ...]  # what each preprocessing step fitted, in order; () without any
    num_params: int  # the model's parameters (regularizers applied)
    resumed_from_epoch: int | None = None  # the checkpoint's epoch it resumes after; None: a fresh start
    stack: StackInfo | None = None  # a stack member's stack; None (no key): trained alone
    # where it trains (device, threads, host: ``dlbench.*`` tags), added by a worker process for
    # the observers of the parent; None (no key) in the process that trains it
    environment: dict[str, str] | None = None

    @classmethod
    def of(cls, trial: Trial, model, data, device, resumed_from_epoch: int | None = None,
           stack: StackInfo | None = None) -> TrialInfo:
        """The info of ``trial``, trained on ``device`` with its built ``model`` and its
        ``data`` (a ``dlbench.DeviceData``)."""
        return cls(device=str(device), dataset_hash=data.content_hash, dataset=trial.config["dataset"]["name"],
                   num_classes=data.num_classes, dataset_source=data.source, preprocessing=data.preprocessing,
                   num_params=sum(p.numel() for p in model.parameters()), resumed_from_epoch=resumed_from_epoch,
                   stack=stack)


# where a trial ran and from what: a column of the trial tables (``dlbench.load_trials``, a report's
# trials.csv) per tag of its run, empty where a run has none; what ``dlbench compare`` lists when
# two runs of a study differ in it. ``host``: the machine that trained it, else the one that logged it.
PROVENANCE = {"dataset_hash": "dlbench.dataset_hash", "git_commit": "dlbench.git_commit",
              "dlbench_version": "dlbench.version", "torch_version": "dlbench.torch_version",
              "python_version": "dlbench.python_version", "device": "dlbench.device",
              "device_name": "dlbench.device_name", "torch_threads": "dlbench.torch_threads",
              "host": "dlbench.worker_host"}


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
