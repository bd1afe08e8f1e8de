"""`dlbench reproduce --study RUN_ID`: re-run a whole study from what its study run recorded,
into a new study run, and compare the two trial by trial.

A study run holds what its reproduction needs: the study file and the studies it ran, the run
options that change a trial's bits (``dlbench.option.*``: jobs, stack size, CUDA graphs,
determinism, device), the local plugin files it loaded (``plugins/<file>``, their sha256 in
``plugins.json``) and, on each trial run, where and how it trained (commit, versions, device,
threads, plugins, data). The steps, which :func:`dlbench.session.reproduce_study` runs in order:

- :func:`read_original`: the study run, its study file, its trial runs by ``dlbench.trial``;
- :func:`replay`: how to run it again here: the study file (as recorded, else the attached copy
  written to ``.dlbench/reproductions/<run id>/``), the plugins folder (as recorded, else the
  attached files written there), the recorded options, a new study run (``--force``: every trial
  trains again) tagged ``dlbench.reproduces``;
- :func:`provenance_warnings`: what differs here, before anything trains;
- the normal runner (``dlbench run``'s), in :func:`threads_as_recorded`;
- :func:`compare_reproduction`: every metric history of every trial compared exactly, and which
  kind of comparison holds: ``bit-for-bit`` on the same platform, device, torch and threads,
  ``statistical`` (``dlbench compare``) otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dlbench.datastore import pointer_for, recorded_md5
from dlbench.errors import UserError
from dlbench.execution import resolve_device
from dlbench.plugins import Plugins
from dlbench.provenance import components_used
from dlbench.reproduce import (code_notes, compare, compared_metrics, determinism_notes, environment_notes,
                               plugin_notes)
from dlbench.paths import PLUGINS_RECORD
from dlbench.runner import StudyRun
from dlbench.settings import RunOptions, StudyReproduceOptions
from dlbench.trial import Trial

BIT_FOR_BIT = "bit-for-bit"
STATISTICAL = "statistical"
REPORTS_DIR = Path("reports/reproductions")  # <the original's id, 8 characters>/<study>/: a reproduction's reports


@dataclass(frozen=True)
class Original:
    """The study run to reproduce, as its store holds it."""

    run: object  # the study run (a tracking.store.StoredRun)
    study_file_name: str
    study_file_text: str
    studies: tuple[str, ...]  # the studies of the file it ran
    trials: dict[str, object]  # its trial runs by trial name (``dlbench.trial``), in the order they ran
    plugins: dict | None  # plugins.json: the folder and each local plugin file's sha256; None: not recorded
    tracking_uri: str

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def name(self) -> str:
        return self.run.tags.get("mlflow.runName", self.run.run_id)


@dataclass(frozen=True)
class Replay:
    """How the study runs again here: ``dlbench run``'s options, and what the choice of them says."""

    run: RunOptions
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrialMatch:
    """One trial of the study, original against reproduction."""

    trial: str  # its name in its study run (``dlbench.trial``)
    original: str | None  # the run ids (None: no such trial on that side)
    reproduction: str | None
    outcome: str  # identical, differs, missing, status
    detail: str  # what the line says after the outcome

    @property
    def identical(self) -> bool:
        return self.outcome == "identical"

    def line(self) -> str:
        return f"{self.outcome:<9} {self.trial}: {self.detail}"


@dataclass
class StudyReproduction:
    """A study run reproduced: both runs, the kind of comparison that holds between them and why,
    the trials compared value by value, and what differs in their provenance."""

    original_id: str
    reproduction_id: str
    kind: str  # BIT_FOR_BIT or STATISTICAL
    why_kind: str  # what matched (bit-for-bit), or what differs (statistical)
    trials: list[TrialMatch]
    warnings: list[str]
    tracking_uri: str
    reports: list[Path] = field(default_factory=list)
    comparison: object | None = None  # the two study runs compared (a dlbench.comparison.Comparison)
    comparison_dir: Path | None = None  # its report

    @property
    def identical(self) -> int:
        return sum(t.identical for t in self.trials)

    @property
    def reproduced(self) -> bool:
        """Every trial bit-identical, where bits are expected to be; elsewhere (another device or
        machine) every claim's verdict agrees and every level is equivalent (``dlbench compare``)."""
        held = self.comparison is None or self.comparison.passed
        if self.kind == BIT_FOR_BIT:
            return self.identical == len(self.trials) > 0 and held
        return self.comparison is not None and held

    def summary(self) -> str:
        return (f"{self.identical} of {len(self.trials)} trials bit-identical; "
                f"comparison: {self.kind} ({self.why_kind})")


def read_original(run_id: str, tracking_uri: str) -> Original:
    """The study run ``run_id`` with its study file and trial runs; a UserError when it is no
    study run or its study file is not attached."""
    from dlbench.tracking.reader import attached_study_file  # mlflow is heavy: imported only to reproduce
    from dlbench.tracking.relocate import require_in_place
    from dlbench.tracking.store import Store

    require_in_place(tracking_uri, "dlbench reproduce --study")  # a copied store: its artifacts are the old one's
    store = Store(tracking_uri)
    run = store.run(run_id)
    require_study_run(run)
    name, text, studies = attached_study_file(tracking_uri, run_id)
    if text is None:
        raise UserError(f"study run {run_id} has no study file attached ({name or 'no dlbench.study_file tag'} is "
                        "missing from its artifacts), and a study is reproduced from the file it ran: restore the "
                        "artifact, or run the study file again with `dlbench run FILE --force`")
    record = store.artifact_text(run_id, PLUGINS_RECORD)
    return Original(run, name, text, tuple(studies), store.trials_of(run), json.loads(record) if record else None,
                    tracking_uri)


def require_study_run(run) -> None:
    """A UserError unless ``run`` (a StoredRun) is a study run; a trial's names its study run."""
    role = run.tags.get("dlbench.role", "missing")
    if role == "study":
        return
    parent = run.tags.get("mlflow.parentRunId")
    if parent:
        raise UserError(f"run {run.run_id} is the {role} run {run.tags.get('mlflow.runName', '')!r} of study run "
                        f"{parent}, not a study run: `dlbench reproduce --study {parent}` re-runs its whole study, "
                        f"`dlbench reproduce {run.run_id}` (without --study) this trial alone")
    raise UserError(f"run {run.run_id} is not a dlbench study run (dlbench.role = {role!r}); pass the id of the "
                    "parent run `dlbench run` made for the study")


def replay(original: Original, options: StudyReproduceOptions) -> Replay:
    """``dlbench run``'s options to run ``original``'s studies again here, into a new study run
    (``force``: nothing skipped, joined or recorded from an earlier run), with the options it
    recorded unless ``options`` gives them; the study file and plugins folder as recorded when
    they are here, else written from its artifacts to ``options.work_dir/<run id>/``."""
    folder = options.work_dir / original.run_id
    study_file, notes = study_file_here(original, folder)
    plugins_dir, more = plugins_dir_here(original, options.plugins_dir, folder)
    device, about_device = device_here(original.run.tags, options.device)
    tags = original.run.tags
    graphs = tags.get("dlbench.option.cuda_graphs", "auto")
    run = RunOptions(
        study_file=study_file, only=original.studies, tracking_uri=original.tracking_uri, device=device,
        plugins_dir=plugins_dir, reports_dir=options.reports_dir or REPORTS_DIR / original.run_id[:8], force=True,
        deterministic=recorded_determinism(original), data_dir=options.data_dir,
        allow_data_mismatch=options.allow_data_mismatch, checkpoint_dir=options.checkpoint_dir,
        jobs=options.jobs or recorded_number(tags.get("dlbench.option.jobs")),
        stack_size=recorded_number(tags.get("dlbench.option.stack_size")),
        cuda_graphs="auto" if graphs == "on" and not device.startswith("cuda") else graphs,
        study_tags=(("mlflow.runName", f"reproduce of {original.name}"), ("dlbench.reproduces", original.run_id),
                    ("mlflow.note.content", f"Reproduction of study run {original.run_id} by "
                                            "`dlbench reproduce --study`: every trial trained again.")))
    if tags.get("dlbench.option.executor") == "ray":
        notes.append("executor: the original ran as Ray tasks; this reproduction trains on this machine's cores")
    return Replay(run, tuple(notes + more + about_device))


def study_file_here(original: Original, folder: Path) -> tuple[Path, list[str]]:
    """The study file to run: the recorded path when it holds the attached text, else the
    attached text written to ``folder`` (and why)."""
    recorded = Path(original.run.tags.get("dlbench.study_file", original.study_file_name))
    try:
        if recorded.is_file() and recorded.read_text(encoding="utf-8") == original.study_file_text:
            return recorded, []
    except (OSError, UnicodeDecodeError):
        pass
    path = folder / original.study_file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(original.study_file_text, encoding="utf-8")
    why = "differs from the one the study run attached (edited since)" if recorded.exists() else "is not here"
    return path, [f"study file: {recorded} {why}: running the attached copy, written to {path}"]


def plugins_dir_here(original: Original, given: Path | None, folder: Path) -> tuple[Path | None, list[str]]:
    """The local plugins folder to load: ``given``; else the one the study run loaded when it is
    here; else the plugin files it attached, written to ``folder/plugins``; None (``dlbench
    run``'s default, plugins/ next to the study file) when it recorded none."""
    record = original.plugins
    if given is not None or record is None:
        return given, []
    recorded = record.get("folder")
    if recorded and Path(recorded).is_dir():
        return Path(recorded), []
    if not record.get("files"):
        return None, []
    from dlbench.tracking.store import Store  # mlflow is heavy: imported only to reproduce

    store, restored = Store(original.tracking_uri), folder / "plugins"
    restored.mkdir(parents=True, exist_ok=True)
    for stale in restored.glob("*.py"):
        stale.unlink()
    for name in record["files"]:
        text = store.artifact_text(original.run_id, f"plugins/{name}")
        if text is None:
            raise UserError(f"the plugins folder {recorded} of study run {original.run_id} is not here, and the run "
                            f"has no copy of its plugin file {name} attached: name the folder with --plugins-dir DIR")
        (restored / name).write_text(text, encoding="utf-8")
    files = f"{len(record['files'])} plugin file{'s' if len(record['files']) > 1 else ''}"
    return restored, [f"plugins: the plugins folder {recorded} is not here: loading the {files} the study run "
                      f"attached, written to {restored}"]


def device_here(tags: dict[str, str], given: str | None) -> tuple[str, list[str]]:
    """``given``, else the kind of device the study trained on (a GPU's when this machine has
    one, else the CPU, said)."""
    if given is not None:
        return given, []
    recorded = tags.get("dlbench.device", "cpu")
    if not recorded.startswith("cuda"):
        return "cpu", []
    if torch.cuda.is_available():
        spec = tags.get("dlbench.option.device", "cuda")
        index = spec.partition(":")[2]
        usable = spec == "cuda" or (index.isdigit() and int(index) < torch.cuda.device_count())
        return spec if usable else "cuda", []
    return "cpu", [f"device: the study trained on {recorded} ({tags.get('dlbench.device_name', 'a GPU')}) and this "
                   "machine has no GPU: training on the CPU"]


def recorded_number(value: str | None) -> int | None:
    """An option recorded as a number (``auto`` or missing: None)."""
    return int(value) if value is not None and value.isdigit() else None


def recorded_determinism(original: Original) -> bool:
    """Whether the original ran in deterministic mode (a study run made before the option tags:
    as its trial runs say)."""
    tags = [original.run.tags] + [run.tags for run in original.trials.values()]
    return all(t.get("dlbench.option.deterministic", t.get("dlbench.deterministic")) != "false" for t in tags)


def recorded_threads(original: Original) -> int | None:
    """Torch's threads per trial in the original, when every trial had the same number."""
    counts = {run.tags.get("dlbench.torch_threads", "") for run in original.trials.values()}
    if len(counts) == 1 and (threads := counts.pop()).isdigit():
        return int(threads)
    return None


@contextmanager
def threads_as_recorded(threads: int | None, options: RunOptions) -> Iterator[None]:
    """Train with ``threads`` torch threads per trial (the original's) on a CPU where this
    machine allows it, the thread count changing a CPU's reductions: set in this process for one
    job; for worker processes (each takes its share of the cores) this process's cores narrowed
    to jobs x threads while the study runs, when there are more."""
    jobs = options.jobs
    if threads is None or jobs is None or resolve_device(options.device).type != "cpu":
        yield
        return
    if jobs == 1:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
        return
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) // jobs == threads or len(cores) < jobs * threads:
        yield  # the same share already, or too few cores to give it (the comparison then says so)
        return
    os.sched_setaffinity(0, cores[:jobs * threads])
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def provenance_warnings(original: Original, trials: list[Trial], plugins: Plugins, run: RunOptions) -> list[str]:
    """What differs between the original's provenance and this machine, before anything trains:
    the code, the versions and device, each trial's config and plugins, the local plugin files,
    the data. A UserError when a plugin a trial used is not installed here."""
    tags = original.run.tags
    notes = code_notes(tags, Path(run.study_file).resolve().parent)
    notes += environment_notes(tags, resolve_device(run.device))
    per_trial = []
    for trial in trials:
        stored = original.trials.get(trial.key)
        if stored is None:
            continue
        hashed = stored.tags.get("dlbench.config_hash")
        config = ([f"config: the trial resolves to config hash {trial.config_hash[:12]} here, {hashed[:12]} in the "
                   "run"] if hashed and hashed != trial.config_hash else [])
        per_trial.append(config + plugin_notes(stored, trial, plugins.registry) + determinism_notes(stored.tags))
    notes += counted(per_trial, len(original.trials))
    notes += plugin_file_notes(original.plugins, plugins, trials)
    return notes + data_notes(original, run.data_dir)


def counted(per_trial: list[list[str]], total: int) -> list[str]:
    """Each distinct note once, with the number of trials it holds for when not all of them."""
    counts: dict[str, int] = {}
    for notes in per_trial:
        for note in dict.fromkeys(notes):
            counts[note] = counts.get(note, 0) + 1
    return [note if n == total else f"{note} ({n} of {total} trials)" for note, n in counts.items()]


def plugin_file_notes(record: dict | None, plugins: Plugins, trials: list[Trial]) -> list[str]:
    """The local plugin files here against those the study run loaded (by name and sha256)."""
    if record is None:
        return ["plugins: the study run recorded no local plugin files (made by an older dlbench): a local plugin "
                "file changed since is not detected"]
    here = plugins.local_digests()
    recorded: dict[str, str] = record.get("files", {})
    notes = []
    for name, digest in recorded.items():
        if name not in here:
            notes.append(f"plugins: {name}, a local plugin file the original loaded, is not loaded here "
                         f"(from {plugins.plugins_dir or 'no plugins folder'})")
        elif here[name] != digest:
            notes.append(f"plugins: {name} has changed since the original ran (sha256 {here[name][:12]} here, "
                         f"{digest[:12]} in the study run); {using(name, trials, plugins.registry)} of the "
                         f"{len(trials)} trials use its components, and may differ")
    return notes + [f"plugins: {name} is loaded here, and was not by the original"
                    for name in here if name not in recorded]


def using(file_name: str, trials: list[Trial], registry) -> int:
    """How many of ``trials`` use a component of the local plugin file ``file_name``."""
    def uses(trial: Trial) -> bool:
        return any(origin.startswith("local (") and Path(origin[7:-1]).name == file_name
                   for _, _, origin in components_used(trial, registry))

    return sum(map(uses, trials))


def data_notes(original: Original, data_dir: Path | None) -> list[str]:
    """The data version (``data.dvc``'s md5) here against the one the original's trials recorded."""
    recorded = sorted({r.tags.get("dlbench.data_dvc_md5", "") for r in original.trials.values()} - {""})
    if data_dir is None or not recorded:
        return []
    pointer = pointer_for(Path(data_dir))
    here = recorded_md5(pointer) if pointer.is_file() else None
    if here is None:
        return [f"data: the original's trials ran on the data {', '.join(recorded)} (md5 of data.dvc); there is no "
                f"{pointer} here"]
    if here not in recorded:
        return [f"data: {pointer} records md5 {here} here, {', '.join(recorded)} in the original's trials"]
    return []


def compare_reproduction(original: Original, run: StudyRun, warnings: list[str]) -> StudyReproduction:
    """The new study run of ``run`` against ``original``: every trial's metric histories compared
    value by value (tolerance 0), the kind of comparison that holds, both tagged on the new
    study run (``dlbench.reproduction_kind``, ``dlbench.trials_identical``)."""
    from dlbench.tracking.keys import metric_name  # mlflow is heavy: imported only to reproduce
    from dlbench.tracking.store import Store

    store = Store(original.tracking_uri)
    mine = store.trials_of(store.run(run.parent_run_id))
    theirs = original.trials
    wanted = {r.run_id: compared_metrics(r) for r in theirs.values()} | {r.run_id: list(r.metrics)
                                                                         for r in mine.values()}
    histories = store.histories_of(wanted)
    by_name = {run_id: {metric_name(k): h for k, h in found.items()} for run_id, found in histories.items()}
    names = list(theirs) + [name for name in mine if name not in theirs]
    matches = [match_trial(name, theirs.get(name), mine.get(name), by_name) for name in names]
    pairs = [(theirs[n], mine[n]) for n in names if n in theirs and n in mine]
    kind, why = comparison_kind(pairs, original.run.tags)
    result = StudyReproduction(original.run_id, run.parent_run_id, kind, why, matches,
                               warnings + dataset_notes(pairs, len(names)), original.tracking_uri, list(run.reports))
    store.set_tags(run.parent_run_id, {"dlbench.reproduction_kind": kind, "dlbench.reproduction_why": why,
                                       "dlbench.trials_identical": f"{result.identical}/{len(matches)}"})
    return result


def match_trial(name: str, original, reproduction, histories: dict) -> TrialMatch:
    """One trial's outcome: missing on a side, a status that differs, else its metric histories
    compared exactly."""
    a, b = (run.run_id if run is not None else None for run in (original, reproduction))
    if a is None or b is None:
        where = "in the original study run" if a is None else "in the reproduction"
        return TrialMatch(name, a, b, "missing", f"no run {where}")
    before, now = status_of(original), status_of(reproduction)
    if before != now:
        return TrialMatch(name, a, b, "status", f"{now} here, {before} in the original")
    same, largest, compared, mismatched = compare(histories[a], histories[b], 0.0)
    if same:
        return TrialMatch(name, a, b, "identical", f"{compared} metric values equal")
    key, step, diff = largest
    steps = f"; logged steps differ: {', '.join(mismatched)}" if mismatched else ""
    return TrialMatch(name, a, b, "differs", f"largest difference {diff:.3g} in {key or '-'} at step {step} "
                                             f"({compared} values compared){steps}")


def status_of(run) -> str:
    return run.tags.get("dlbench.status") or run.status.lower()


# what must be the same for the same bits: (tag, its name in a sentence)
SAME_BITS = (("dlbench.platform", "platform"), ("dlbench.device_name", "device name"),
             ("dlbench.torch_version", "torch"), ("dlbench.cuda_version", "CUDA"), ("dlbench.cudnn_version", "cuDNN"))


def comparison_kind(pairs: list[tuple], study_tags: dict[str, str]) -> tuple[str, str]:
    """``bit-for-bit`` when each trial trained here on the platform, device, torch (CUDA, cuDNN)
    and (on a CPU) threads its original did, deterministically, with what matched; else
    ``statistical`` with what differs."""
    differ: dict[str, None] = {}
    for before, now in pairs:
        for note in bit_differences(before.tags, now.tags):
            differ[note] = None
    if study_tags.get("dlbench.option.deterministic") == "false":
        differ["the original ran with --nondeterministic"] = None
    if differ:
        return STATISTICAL, "; ".join(differ)
    if not pairs:
        return STATISTICAL, "no trial ran on both sides"
    tags = pairs[0][1].tags
    device = tags.get("dlbench.device", "?").split(":")[0]
    threads = sorted({int(now.tags.get("dlbench.torch_threads", "0") or 0) for _, now in pairs})
    cores = (f", {threads[0]} thread{'s' if threads[0] != 1 else ''} per trial" if len(threads) == 1
             else f", {threads[0]}-{threads[-1]} threads per trial as recorded") if device == "cpu" else ""
    return BIT_FOR_BIT, (f"same machine: platform {tags.get('dlbench.platform', '?')}, device {device} "
                         f"({tags.get('dlbench.device_name', '?')}), torch {tags.get('dlbench.torch_version', '?')}"
                         f"{cores}")


def bit_differences(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between where a trial trained (``before``) and where it trained again (``now``)."""
    kinds = [tags.get("dlbench.device", "cpu").split(":")[0] for tags in (before, now)]
    if kinds[0] != kinds[1]:
        return [f"device {kinds[1]} here, {kinds[0]} in the original"]
    notes = [f"{name} {now.get(tag)} here, {before[tag]} in the original" for tag, name in SAME_BITS
             if tag in before and now.get(tag) != before[tag]]
    threads = [tags.get("dlbench.torch_threads") for tags in (before, now)]
    if kinds[0] == "cpu" and threads[0] and threads[0] != threads[1]:
        notes.append(f"{threads[1]} torch threads per trial here, {threads[0]} in the original")
    return notes


def dataset_notes(pairs: list[tuple], total: int) -> list[str]:
    """The trials whose dataset hashed otherwise here than in the original."""
    per_trial = [[f"data: dataset hash {now.tags['dlbench.dataset_hash'][:12]} here, "
                  f"{before.tags['dlbench.dataset_hash'][:12]} in the original"]
                 for before, now in pairs
                 if before.tags.get("dlbench.dataset_hash") and now.tags.get("dlbench.dataset_hash")
                 and before.tags["dlbench.dataset_hash"] != now.tags["dlbench.dataset_hash"]]
    return counted(per_trial, total)
