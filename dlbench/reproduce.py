"""`dlbench reproduce RUN_ID`: rebuild a trial from its MLflow run alone, re-run it, compare.

The run holds everything needed: the resolved config (config.json, with the seed), the data
hash, the plugins with their origins and the environment. The re-run is logged as a new run,
``reproduce of <run name>``, nested under the original's study run,
tagged ``dlbench.reproduces`` and compared metric by metric, epoch by epoch.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import torch

from dlbench import hookimpl
from dlbench.datacache import DataCache
from dlbench.datastore import pointer_for, recorded_md5
from dlbench.determinism import set_determinism
from dlbench.diagnostics import Diagnostics
from dlbench.errors import UserError
from dlbench.execution.unit import execute
from dlbench.planning import Work, stack_id
from dlbench.plugins import Plugins, by_file_name
from dlbench.provenance import components_used, environment, git_commit
from dlbench.trial import Trial, config_hash


@dataclass
class Verdict:
    original: str
    rerun: str
    reproduced: bool
    largest: tuple[str, int, float]  # metric, step, absolute difference
    compared: int  # values compared
    mismatched_steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def trial_from_run(stored, config: dict) -> Trial:
    levels = {k.removeprefix("dlbench.factor."): v for k, v in stored.tags.items() if k.startswith("dlbench.factor.")}
    group = config_hash({k: v for k, v in config.items() if k != "seed"})
    return Trial(index=1, study=stored.tags.get("dlbench.study", "reproduce"), levels=levels or {"level": "?"},
                 seed=int(config["seed"]), config=config, config_hash=config_hash(config), group_hash=group,
                 label=stored.tags.get("dlbench.level", ""))


def differences(stored, trial: Trial, plugins: Plugins, device: torch.device) -> list[str]:
    """What differs between the original run's recorded provenance and this machine now."""
    tags, notes = stored.tags, []
    if tags.get("dlbench.config_hash") and tags["dlbench.config_hash"] != trial.config_hash:
        notes.append("config: the recorded config.json does not hash to the run's dlbench.config_hash")
    return (notes + code_notes(tags, Path.cwd()) + environment_notes(tags, device)
            + plugin_notes(stored, trial, plugins.registry) + determinism_notes(tags))


def code_notes(tags: dict[str, str], where: Path) -> list[str]:
    """The commit of the git work tree at ``where`` against the one a run recorded, and dirty trees."""
    notes = []
    commit, dirty = git_commit(where)
    if tags.get("mlflow.source.git.commit") and commit and tags["mlflow.source.git.commit"] != commit:
        notes.append(f"code: git commit {commit[:10]} here, {tags['mlflow.source.git.commit'][:10]} in the run")
    if dirty:
        notes.append("code: the work tree has uncommitted changes")
    if tags.get("dlbench.git_dirty") == "true":
        notes.append("code: the original run was made from a dirty tree (its git.diff artifact has the changes)")
    return notes


def environment_notes(tags: dict[str, str], device: torch.device) -> list[str]:
    """dlbench, torch, Python, the device's name and CUDA here against what a run recorded."""
    env = environment(device)
    return [f"environment: {key.removeprefix('dlbench.')} {env.get(key)} here, {tags[key]} in the run"
            for key in ("dlbench.version", "dlbench.torch_version", "dlbench.python_version", "dlbench.device_name",
                        "dlbench.cuda_version", "dlbench.cudnn_version")
            if key in tags and env.get(key) != tags[key]]


def plugin_notes(stored, trial: Trial, registry) -> list[str]:
    """Each plugin component ``trial`` uses, by name and origin here, against the run's
    ``dlbench.plugin.*`` tags; a UserError when one is not installed here."""
    try:
        used = {f"dlbench.plugin.{k}": f"{n} [{o}]" for k, n, o in components_used(trial, registry)}
    except UserError as exc:
        raise UserError(f"run {stored.run_id} used a plugin that is not installed here: {exc}") from None
    return [f"plugin: {key.removeprefix('dlbench.plugin.')} is {value} here, {stored.tags[key]} in the run"
            for key, value in used.items() if key in stored.tags and not same_plugin(stored.tags[key], value)]


def same_plugin(recorded: str, here: str) -> bool:
    """Whether two ``name [origin]`` tags name one plugin: equal, or the same local plugin file
    (by name) in another folder: a reproduction elsewhere, or the plugins folder named another way."""
    return by_file_name(recorded) == by_file_name(here)


def determinism_notes(tags: dict[str, str]) -> list[str]:
    if tags.get("dlbench.deterministic") == "false":
        return ["determinism: the original run was not in deterministic mode; expect differences"]
    return []


def compared_metrics(stored) -> list[str]:
    """The metrics of a run to compare with a re-run's: every one but an older run's repeat of
    the learning rate (``diag.lr``), no longer logged."""
    return [k for k in stored.metrics if k != "diag.lr"]


def compare(original: dict[str, list[tuple[int, float]]], rerun: dict[str, list[tuple[int, float]]],
            tolerance: float) -> tuple[bool, tuple[str, int, float], int, list[str]]:
    """Every recorded value against the re-run's at the same metric and step."""
    largest, compared, mismatched = ("", -1, 0.0), 0, []
    for key, values in original.items():
        mine = dict(rerun.get(key, []))
        if set(mine) != {step for step, _ in values}:
            mismatched.append(key)
        for step, value in values:
            if step not in mine:
                continue
            compared += 1
            diff = 0.0 if (math.isnan(value) and math.isnan(mine[step])) else abs(value - mine[step])
            if diff and value == _as_float32(mine[step]):
                diff = 0.0  # runs logged before accuracies were exact (k / n in float64) hold them as float32
            if math.isnan(diff):
                diff = math.inf
            if diff > largest[2] or largest[1] < 0:
                largest = (key, step, diff)
    return (not mismatched and largest[2] <= tolerance), largest, compared, mismatched


def _as_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def reproduce(run_id: str, plugins: Plugins, *, tracking_uri: str, device: torch.device, tolerance: float,
              data_dir: Path | None, stream: TextIO) -> Verdict:
    from dlbench.tracking import StudyContext, Tracker  # mlflow is heavy: imported only to reproduce
    from dlbench.tracking.keys import metric_name
    from dlbench.tracking.relocate import require_in_place
    from dlbench.tracking.store import Store

    require_in_place(tracking_uri, "dlbench reproduce")  # a copied store: the config read from the old one's artifacts
    source = Store(tracking_uri)
    stored = source.run(run_id)
    if stored.tags.get("dlbench.role") not in ("trial", "tuning", "reproduction"):
        raise UserError(f"run {run_id} is not a dlbench trial run (dlbench.role = "
                        f"{stored.tags.get('dlbench.role', 'missing')!r}); pass the id of a child run")
    if stored.tags.get("dlbench.status") == "pruned":
        raise UserError(f"run {run_id} is a tuning trial its search pruned after epoch "
                        f"{stored.tags.get('dlbench.epochs_run', '?')} (by a rule made from the trials before it, "
                        "which a re-run alone does not have); reproduce a tuning trial that finished, or a final run")
    trial = trial_from_run(stored, source.config(run_id))
    warnings = differences(stored, trial, plugins, device)
    work, trial = _as_it_ran(source, stored, trial, warnings)
    deterministic = stored.tags.get("dlbench.deterministic", "true") == "true"
    set_determinism(deterministic, device)
    threads = stored.tags.get("dlbench.torch_threads", "")
    if device.type == "cpu" and threads.isdigit() and int(threads) > 0:
        # a CPU's reductions are split by thread count: another count changes the last bits, which
        # 40 epochs amplify (a worker of `dlbench run` trains with its share of the cores)
        torch.set_num_threads(int(threads))
    # a stack that replayed its steps from CUDA graphs does so again (an older run has no tag: eager)
    cuda_graphs = "on" if stored.tags.get("dlbench.cuda_graphs") == "true" and device.type == "cuda" else "off"

    context = StudyContext(tags={"dlbench.deterministic": str(deterministic).lower()}, registry=plugins.registry)
    if data_dir is not None and pointer_for(data_dir).is_file():
        context.tags["dlbench.data_dvc_md5"] = recorded_md5(pointer_for(data_dir)) or ""
    tracker = Tracker(tracking_uri, source.experiment_name(stored))
    tracker.start_reproduction(stored, device, context)
    observers = {"dlbench.tracking": OnlyTrial(trial.index, tracker),
                 "dlbench.diagnostics": Diagnostics(plugins.hook, plugins.registry)}
    for name, observer in observers.items():
        plugins.pm.register(observer, name=name)
    try:
        results = dict((t.index, r) for t, r in execute(work, plugins.registry, plugins.hook, DataCache(data_dir),
                                                        device, checkpoint_dir=None, cuda_graphs=cuda_graphs))
    finally:
        for name in observers:
            plugins.pm.unregister(name=name)
    result = results[trial.index]
    rerun_id = tracker.run_ids[trial.index]
    if result.status == "failed":
        raise UserError(f"the re-run of {run_id} failed: {(result.error or '').strip().splitlines()[-1]}")

    recorded_hash = stored.tags.get("dlbench.dataset_hash")
    new_hash = source.run(rerun_id).tags.get("dlbench.dataset_hash")
    if recorded_hash and new_hash and recorded_hash != new_hash:
        warnings.append(f"data: dataset hash {new_hash[:12]} here, {recorded_hash[:12]} in the run")
    recorded = source.histories(run_id, compared_metrics(stored))
    original = {metric_name(k): h for k, h in recorded.items()}  # older diag.* names too
    ok, largest, compared, mismatched = compare(original, source.histories(rerun_id, list(original)), tolerance)
    tracker.client.set_tag(rerun_id, "dlbench.reproduced", str(ok).lower())
    tracker.client.set_tag(rerun_id, "dlbench.max_abs_diff", repr(largest[2]))
    return Verdict(run_id, rerun_id, ok, largest, compared, mismatched, warnings)


def _as_it_ran(source, stored, trial: Trial, warnings: list[str]):
    """The unit of work the trial ran in: alone, or its whole stack again (the members recorded
    in its stack.json, in order), which makes the re-run bit-exact. Returns (work, the trial)."""
    if not stored.tags.get("dlbench.stack_id"):  # trained alone (a stack of one has an id: it ran as a stack)
        return Work((trial,), stack_id([trial])), trial
    record = source.artifact_json(stored.run_id, "stack.json")
    position = int(stored.tags.get("dlbench.stack_member", "0"))
    members = [replace(trial_from_run(stored, config), index=i + 1) for i, config in enumerate(record["members"])]
    target = replace(trial, index=position + 1)
    members[position] = target
    # members that shared a stacked initializer initialized at once (an older run has no tag: one by one)
    work = Work(tuple(members), stack_id(members), as_stack=True,
                stacked_init=stored.tags.get("dlbench.stacked_init") == "true")
    if work.stack_id != record.get("stack_id"):
        warnings.append(f"stack: the recorded members hash to {work.stack_id}, not {record.get('stack_id')}")
    return work, target


class OnlyTrial:
    """Passes one trial's lifecycle events to ``observer``: a stack re-runs every member, but
    only the reproduced one is logged."""

    def __init__(self, index: int, observer):
        self.index, self.observer = index, observer

    @hookimpl
    def dlbench_trial_start(self, trial, model, info):
        if trial.index == self.index:
            self.observer.dlbench_trial_start(trial=trial, model=model, info=info)

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch, metrics):
        if trial.index == self.index:
            self.observer.dlbench_epoch_end(trial=trial, epoch=epoch, metrics=metrics)

    @hookimpl
    def dlbench_diagnostics(self, trial, step, values):
        if trial.index == self.index:
            self.observer.dlbench_diagnostics(trial=trial, step=step, values=values)

    @hookimpl
    def dlbench_checkpoint(self, trial, epoch):
        if trial.index == self.index:
            self.observer.dlbench_checkpoint(trial=trial, epoch=epoch)

    @hookimpl
    def dlbench_trial_end(self, trial, result):
        if trial.index == self.index:
            self.observer.dlbench_trial_end(trial=trial, result=result)
