"""The preflight: every distinct configuration of a study built once on a tiny batch, before any
trial trains, so that whatever a plugin raises shows up in seconds and names the key of the study
file that configured it.

What is checked, once per distinct config (the seeds of a level share one): the dataset (made by
its plugin or read from ``data/``, once per distinct dataset), then on the first ``TINY``
examples of each split each preprocessing step (fitted on the tiny training split, applied to
every split), that the architecture accepts the input shape (``dlbench.shapes``: a mismatch is
reported at the architecture's key path with the dataset's), ``train.build`` exactly as a trial
calls it (the architecture with its activation, each regularizer and its ``wrap_model``, the
initializer with its own options, greedy pretraining included, the optimizer and the schedule), then one training step as ``train_epoch``
takes it (``transform_batch``, forward, ``penalty``, backward, ``before_step``, the optimizer's
and the schedule's step, ``after_step``), an evaluation in eval mode, ``epoch_end``,
``should_stop`` and ``end_of_training``.

A component that needs a capability of the architecture (the slots dropout and normalization
fill, the ``hidden_blocks`` layer-wise initializers read: see ``dlbench/slots.py``) asks for it
through ``dlbench.slots``; when it raises having found none of what it asked for, the problem is
reported as the capability missing: the component and its key, the capability, the architecture
(its origin and key) that lacks it. A study that uses no such component needs no such capability.

It runs on the CPU in this process, before any worker receives work, with one torch thread,
and leaves the random states and the thread count as it found them (the determinism flags it
does not touch: they matter on a GPU): the trials run exactly as they would without it. A loss
that is not finite is no problem here (a diverging trial is a result). Not checked: what fails
only later in training, on the full data, on a GPU, or in a stack's stacked optimizer or
regularizer; such a trial still fails alone at run time, with its traceback in ``error.txt``.
"""

from __future__ import annotations

import inspect
import os
import random
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from dlbench import preprocessing
from dlbench.build import build, build_loss, make, mean_loss
from dlbench.config import DEFAULT_LOSS, StudyFile
from dlbench.data import DeviceData
from dlbench.datacache import DataCache
from dlbench.errors import UserError
from dlbench.regularizer import Regularizer
from dlbench.shapes import InputShapeError, check_input_shape
from dlbench.slots import asking, lacking
from dlbench.study import Trial, canonical_json
from dlbench.train import cross_entropy, evaluate

TINY = 16  # examples per split of the tiny input
CPU = torch.device("cpu")
COMPONENT_KEYS = ["dataset", "architecture", "activation", "initializer", "optimizer", "schedule"]


class PreflightError(UserError):
    """Components of a study that raised when built on a tiny batch, each named by its key path."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun} building the study's components and taking one step "
                         f"on a tiny batch (nothing was run or logged):\n{lines}")


@dataclass(frozen=True)
class Checked:
    configs: int
    components: int
    seconds: float
    # each distinct config's model: its parameter count, by group hash (the planner's cost model)
    sizes: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"preflight: checked {self.components} distinct components in {self.configs} distinct configs "
                f"on a tiny batch in {self.seconds:.1f} s")


class _Failure(Exception):
    """An exception of a plugin, with the config keys of the components it is blamed on."""

    def __init__(self, keys: tuple[str, ...], doing: str, asked: list[tuple[str, int]] | None = None):
        super().__init__(keys, doing)
        self.keys, self.doing, self.asked = keys, doing, asked or []


@contextmanager
def blame(*keys: str, doing: str = "when built") -> Iterator[None]:
    """Attribute an exception raised inside to the components set up at ``keys``; the innermost
    blame wins (an activation raising inside the architecture's factory is the activation's). The
    capabilities the components ask of the model inside (``dlbench.slots``) go with the failure."""
    with asking() as asked:
        try:
            yield
        except _Failure:
            raise
        except Exception as exc:
            raise _Failure(keys, doing, asked) from exc


def preflight(study_file: StudyFile, trials: list[Trial], registry, data_dir=None) -> Checked:
    """Check every distinct config of ``trials``; raise :class:`PreflightError` naming every
    component that raised (all of them, not only the first), else say what was checked."""
    started = time.perf_counter()
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(trial.group_hash, []).append(trial)
    problems: dict[str, list[Trial]] = {}
    sizes: dict[str, int] = {}
    cache = DataCache(data_dir)
    with untouched_global_state():
        for group in groups.values():
            failure = check(group[0], registry, cache, sizes)
            for trial in group if failure is not None else []:  # the same config may be set up in several places
                problems.setdefault(describe(failure, trial, registry), []).append(trial)
    if problems:
        raise PreflightError(str(study_file.path), [f"{text} [{_levels(ts)}]" for text, ts in problems.items()])
    return Checked(len(groups), _distinct_components(g[0] for g in groups.values()), time.perf_counter() - started,
                   sizes)


def check(trial: Trial, registry, cache: DataCache, sizes: dict[str, int] | None = None) -> _Failure | None:
    """Build ``trial``'s config on a tiny batch and take one step; the failure, if any. The
    model's parameter count goes into ``sizes`` under the trial's group hash."""
    cfg = trial.config
    try:
        with blame("dataset"):
            dataset = registry.get("dataset", cfg["dataset"]["name"])
            options = {k: v for k, v in cfg["dataset"].items() if k != "name"}
            data = tiny(cache.get(dataset, options, cfg["val_fraction"], CPU))
        for i, spec in enumerate(cfg.get("preprocessing", [])):  # fitted on the tiny training split
            with blame(f"preprocessing[{i}]", doing="when fitted and applied"):
                data = preprocessing.apply(make(registry, "preprocessing", spec), spec["name"], data)
        with blame("architecture", doing="checking the input shape"):
            source = f"dataset {cfg['dataset']['name']!r}" + (" after preprocessing" if cfg.get("preprocessing") else "")
            check_input_shape(registry, cfg["architecture"]["name"], source, data.input_shape)
        random.seed(trial.seed)
        np.random.seed(trial.seed)
        torch.default_generator.manual_seed(trial.seed)  # the CPU's alone: a GPU stays uninitialized
        with blame("loss"):
            loss = build_loss(cfg, registry, data.num_classes)
        built = build(trial, registry, data, CPU, blame=blame)
        one_step(*built, data, loss)
    except _Failure as failure:
        return failure
    if sizes is not None:
        sizes[trial.group_hash] = sum(p.numel() for p in built[0].parameters())
    return None


def tiny(data: DeviceData) -> DeviceData:
    """The first ``TINY`` examples of each split."""
    return replace(data, x_train=data.x_train[:TINY], y_train=data.y_train[:TINY], x_val=data.x_val[:TINY],
                   y_val=data.y_val[:TINY], x_test=data.x_test[:TINY], y_test=data.y_test[:TINY])


def one_step(model, regularizers, optimizer, schedule, data: DeviceData, loss=cross_entropy) -> None:
    """One training step on the whole tiny training split as ``train.train_epoch`` takes it, each
    part blamed on the components acting in it; then an evaluation and the stopping question."""
    regs = [(f"regularizers[{i}]", reg) for i, reg in enumerate(regularizers)]
    model_keys = ("architecture", "activation",
                  *[key for key, reg in regs if type(reg).wrap_model is not Regularizer.wrap_model])
    model.train()
    x, y = data.x_train, data.y_train
    for key, reg in regs:
        with blame(key, doing="in transform_batch"):
            x, y = reg.transform_batch(x, y)
    with blame(*model_keys, doing="in the forward pass"):
        logits = model(x)
    with blame("loss", doing="on the logits"):
        objective = mean_loss(loss, logits, y)
    for key, reg in regs:
        with blame(key, doing="in penalty"):
            objective = objective + reg.penalty(model)
    with blame("optimizer", doing="in zero_grad"):
        optimizer.zero_grad(set_to_none=True)
    with blame(*model_keys, doing="in the backward pass"):
        objective.backward()
    for key, reg in regs:
        with blame(key, doing="in before_step"):
            reg.before_step(model)
    with blame("optimizer", doing="in its step"):
        optimizer.step()
    with blame("schedule", doing="in its step"):
        schedule.step()
    for key, reg in regs:
        with blame(key, doing="in after_step"):
            reg.after_step(model)
    with blame(*model_keys, doing="in evaluation (eval mode)"):
        metrics = evaluate(model, data, loss) | {"lr": optimizer.param_groups[0]["lr"]}
    if hasattr(schedule, "epoch_end"):
        with blame("schedule", doing="in epoch_end"):
            schedule.epoch_end(1, metrics)
    for key, reg in regs:
        with blame(key, doing="in epoch_end"):
            reg.epoch_end(model, 1, metrics)
        with blame(key, doing="in should_stop"):
            reg.should_stop(1, metrics)
    for key, reg in regs:
        with blame(key, doing="in end_of_training"):
            reg.end_of_training(model)


def describe(failure: _Failure, trial: Trial, registry) -> str:
    """``<key path>: <kind> '<name>' [<origin>] raised <Type>: <message> (<when>, at <file>:<line>)``."""
    exc = failure.__cause__
    if isinstance(exc, InputShapeError):  # a study-file error, not a plugin's
        return f"{key_path(trial, 'architecture')}: {exc} (the dataset: {key_path(trial, 'dataset')})"
    if (missing := lacking(failure.asked)) and "architecture" not in failure.keys:
        return missing_capability(trial, registry, failure.keys, missing, exc)
    parts, files = [], set()
    for key in failure.keys:
        kind, spec = _component(trial.config, key)
        component = registry.get(kind, spec["name"])
        parts.append(f"{key_path(trial, key)} ({kind} {spec['name']!r} [{component.origin}])")
        files.add(_source_file(component.factory))
    at = [f"{_shown(fs.filename)}:{fs.lineno}" for fs in traceback.extract_tb(exc.__traceback__) if fs.filename in files]
    where = f", at {at[-1]}" if at else ""
    message = str(exc).strip().replace("\n", " ") or "(no message)"
    return f"{' and '.join(parts)} raised {type(exc).__name__}: {message} ({failure.doing}{where})"


def missing_capability(trial: Trial, registry, keys, missing: list[str], exc: BaseException) -> str:
    """``<key path> (<kind> '<name>' [<origin>]) needs an architecture with <capability>;
    <key path> (architecture '<name>' [<origin>]) exposes none (<what the component raised>)``."""
    roles = [c.removesuffix(" slots") for c in missing if c.endswith(" slots")]
    wanted = [f"{' or '.join(roles)} slots (dlbench.Slot)"] if roles else []
    wanted += ["hidden_blocks (a sequence of modules, one per hidden layer)"] if "hidden_blocks" in missing else []
    users = " and ".join(_named(trial, registry, key) for key in keys)
    arch = _named(trial, registry, "architecture")
    message = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return (f"{users} needs an architecture with {' and '.join(wanted)}; {arch} exposes none: use an architecture "
            f"that does (dlbench plugins check lists what one supports), or leave the component out of this level "
            f"({type(exc).__name__}: {message})")


def _named(trial: Trial, registry, key: str) -> str:
    kind, spec = _component(trial.config, key)
    return f"{key_path(trial, key)} ({kind} {spec['name']!r} [{registry.get(kind, spec['name']).origin}])"


def key_path(trial: Trial, key: str) -> str:
    """Where the study file set up the component at ``key`` (``optimizer``, ``regularizers[0]``):
    ``studies.dropout.levels.on.regularizers[0]``, ``baseline.optimizer``, or the options a level
    or a study's baseline changed with the table they change (``studies.s.levels.fast.optimizer.lr
    with baseline.optimizer``)."""
    where = trial.where
    if key.startswith(("regularizers[", "preprocessing[")):
        return f"{where.get(key.split('[')[0], 'baseline')}.{key}"
    options = [f"{source}.{k}" for k, source in where.items() if k.startswith(f"{key}.")]
    whole = f"{where.get(key, 'baseline')}.{key}"
    return f"{', '.join(options)} with {whole}" if options else whole


def _component(config: dict, key: str) -> tuple[str, dict]:
    if key.startswith("regularizers["):
        return "regularizer", config["regularizers"][int(key[len("regularizers["):-1])]
    if key.startswith("preprocessing["):
        return "preprocessing", config["preprocessing"][int(key[len("preprocessing["):-1])]
    return key, config.get(key, DEFAULT_LOSS) if key == "loss" else config[key]


def _source_file(factory) -> str | None:
    try:
        return inspect.getsourcefile(inspect.unwrap(factory))
    except (TypeError, OSError):
        return None


def _shown(path: str) -> str:
    """A path relative to the working directory when it lies below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _levels(trials: list[Trial]) -> str:
    """Which trials a problem stops: their levels, a few named."""
    levels = list(dict.fromkeys(f"{t.study}/{t.level}" for t in trials))
    shown = ", ".join(levels[:3]) + (f" and {len(levels) - 3} more levels" if len(levels) > 3 else "")
    return f"{len(trials)} trial{'s' if len(trials) != 1 else ''}: {shown}"


def _distinct_components(trials) -> int:
    specs = set()
    for trial in trials:
        specs.update((key, canonical_json(trial.config[key])) for key in COMPONENT_KEYS)
        specs.update(("regularizer", canonical_json(spec)) for spec in trial.config["regularizers"])
        specs.update(("preprocessing", canonical_json(spec)) for spec in trial.config.get("preprocessing", []))
        if "loss" in trial.config:  # a loss other than the default one
            specs.add(("loss", canonical_json(trial.config["loss"])))
    return len(specs)


@contextmanager
def untouched_global_state() -> Iterator[None]:
    """One torch thread inside; the random states (Python, NumPy, the CPU's torch generator) and
    the thread count restored after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        torch.set_num_threads(threads)
