"""The commands as library calls: one settings object in (``settings.py``), the work done.

The CLI (``cli.py``) maps its options to a settings object, calls one function of this module
and prints what it returns; a script or a notebook calls the same functions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from dlbench.config import read_study_file
from dlbench.contract import check, summary
from dlbench.datastore import BUILTIN_PREPARED, prepare, track
from dlbench.docs import component_page, plugin_listing
from dlbench.dry_run import trial_table
from dlbench.errors import UserError, choose_one_of
from dlbench.execution import cluster_device, resolve_device, resolve_devices, start_method, start_workers
from dlbench.paths import cannot_write, check_report_folders, check_run_outputs
from dlbench.planning import plan, stack_settings
from dlbench.plugins import KINDS, Plugins, load_plugins
from dlbench.preflight import preflight
from dlbench.reproduce import Verdict, reproduce
from dlbench.runner import StudyRun, run_study
from dlbench.settings import (CompareOptions, ExportOptions, ImportOptions, ReportOptions, ReproduceOptions,
                              RunOptions, StatusOptions, StudyReproduceOptions)
from dlbench.study import expand_plan, first_of_each_config
from dlbench.study_reproduction import (StudyReproduction, compare_reproduction, provenance_warnings, read_original,
                                        recorded_threads, replay, threads_as_recorded)
from dlbench.tuning.search import describe_plan


def plugins_for(plugins_dir: Path | None, default: Path) -> Plugins:
    """Plugins with the local folder the user named (which must exist) or the default one (if any):
    ``plugins`` in the working directory, or ``plugins`` next to the study file."""
    if plugins_dir is not None:
        return load_plugins(plugins_dir, required_dir=True)
    if default == Path("plugins"):
        which = "the default: plugins/ next to the study file, or in the working directory for commands without one"
    else:
        which = "the default: plugins/ next to the study file"
    return load_plugins(default, default=which)


def run_file(options: RunOptions, stream: TextIO = sys.stdout) -> StudyRun | None:
    """``dlbench run``: read ``options.study_file``, check every component once (the preflight),
    then print the dry run's tables (returns None) or run the study (returns its tally)."""
    sf = read_study_file(options.study_file)
    plugins = plugins_for(options.plugins_dir, sf.path.parent / "plugins")
    plan_ = expand_plan(sf, plugins.registry, list(options.only) or None)
    ray = options.ray
    devices = [cluster_device(options.device)] if ray else resolve_devices(options.device)  # a Ray cluster has its own
    if options.cuda_graphs == "on" and not ray and devices[0].type != "cuda":
        raise UserError(f"--cuda-graphs on replays training steps from CUDA graphs, which need a GPU, but this run "
                        f"trains on the CPU (--device {options.device}). Leave --cuda-graphs at auto (graphs wherever "
                        f"there is a GPU), or give --device cuda on a machine with one.")
    if not options.dry_run:  # a read-only checkout: say which option puts each output elsewhere, before any work
        check_run_outputs(options.tracking_uri, options.reports_dir, options.checkpoint_dir)
        # a report folder of another study file's study of the same name is not overwritten
        check_report_folders(options.reports_dir, sf.path.resolve(), plan_.studies, sf.name,
                             doing=f"this run of {sf.path}")
    with ExitStack() as cleanup:
        pool = None
        if ray and not options.dry_run:  # first: Ray's workers start and load while the preflight runs
            pool = _start_ray(plugins, plan_.to_check(), options)
            cleanup.callback(pool.close)
        elif not options.dry_run and start_method([str(d) for d in devices]) == "spawn":
            # spawned workers (a GPU's) take seconds to import torch and start CUDA: they do it
            # while the preflight runs (forked ones start in milliseconds, after it)
            pool = start_workers(plan_.trials, plugins, devices, options, plan_.searches)
            if pool is not None:
                cleanup.callback(pool.close, now=True)
        # every distinct component built once on a tiny batch: a plugin that raises stops us here,
        # before any worker trains or any run is logged
        checked = preflight(sf, plan_.to_check(), plugins.registry, data_dir=options.data_dir)
        if options.dry_run:
            stream.write(_dry_run(sf, plan_, plugins, devices[0], options) + f"{checked}\n")
            return None
        stream.write(f"{checked}\n")
        return run_study(sf, plan_.trials, plugins, options, stream, pool, plan_.searches, checked.sizes)


def _start_ray(plugins: Plugins, trials, options: RunOptions):
    try:
        from dlbench.execution.ray_pool import start_ray  # Ray is heavy and optional
    except ImportError as exc:
        raise UserError(f"--executor ray needs Ray, which is not installed here ({exc}). Install it with "
                        "`pip install 'dlbench[ray]'` (on every machine of the cluster), or leave --executor out "
                        "to run on this machine's cores and GPUs.") from None
    return start_ray(plugins, trials, options)


def _dry_run(sf, plan_, plugins: Plugins, device, options: RunOptions) -> str:
    """The trials as tables with their stacks, and the searches of tuned levels."""
    text, trials = "", plan_.trials
    if trials:
        max_size, graphs = stack_settings(device, options.stack_size, options.cuda_graphs)
        same = first_of_each_config(trials)  # identical trials train once: the first
        works = plan([t for t in trials if t.index not in same], plugins.registry, max_size, graphs)
        text += trial_table(sf, trials, works, plugins.registry, graphs) + "\n"
    if plan_.searches:
        text += ("\n" if trials else "") + describe_plan(plan_.searches) + "\n"
        text += f"\n{plan_.total} trials in all from {sf.path} (dry run: nothing trained)\n"
    return text


def reproduce_run(options: ReproduceOptions, stream: TextIO = sys.stdout) -> Verdict:
    """``dlbench reproduce``: re-run the trial of ``options.run_id`` and compare every metric."""
    plugins = plugins_for(options.plugins_dir, Path("plugins"))
    return reproduce(options.run_id, plugins, tracking_uri=options.tracking_uri, device=resolve_device(options.device),
                     tolerance=options.tolerance, data_dir=options.data_dir, stream=stream)


def reproduce_study(options: StudyReproduceOptions, stream: TextIO = sys.stdout) -> StudyReproduction:
    """``dlbench reproduce --study``: re-run the whole study of study run ``options.run_id`` from
    what it recorded, through ``run_file`` (as ``dlbench run`` trains) into a new study run, and
    compare every trial's metrics with the original's (``dlbench/study_reproduction.py``)."""
    original = read_original(options.run_id, options.tracking_uri)
    how = replay(original, options)
    sf = read_study_file(how.run.study_file)
    plugins = plugins_for(how.run.plugins_dir, sf.path.parent / "plugins")
    trials = expand_plan(sf, plugins.registry, list(how.run.only)).trials
    warnings = [*how.notes, *provenance_warnings(original, trials, plugins, how.run)]
    stream.write(f"reproducing study run {original.run_id} ({original.name!r}: {', '.join(original.studies)}) from "
                 f"{sf.path}: every trial trains again, into a new study run\n")
    with threads_as_recorded(recorded_threads(original), how.run):
        run = run_file(how.run, stream)
    result = compare_reproduction(original, run, warnings)
    # the two study runs as `dlbench compare` sees them: the verdict where bits cannot be expected
    compared = CompareOptions(a=result.original_id, b=result.reproduction_id, tracking_uri=options.tracking_uri,
                              out_dir=comparison_folder(how.run.reports_dir, result.reports))
    result.comparison, result.comparison_dir = compare_runs(compared), compared.out_dir
    return result


def comparison_folder(reports_dir: Path, reports: list[Path]) -> Path:
    """Where a reproduction's comparison report goes: ``comparison/`` beside its study reports,
    unless a study's report folder has that name."""
    taken = {folder.name for folder in reports}
    return reports_dir / ("comparison" if "comparison" not in taken else "comparison-with-original")


def compare_runs(options: CompareOptions):
    """``dlbench compare``: the two sides read, compared and written as a report to
    ``options.out_dir``; returns the :class:`dlbench.comparison.Comparison`."""
    from dlbench import comparison  # mlflow and the report's statistics: imported only to compare
    from dlbench.report.compare_report import write_comparison
    from dlbench.tracking.relocate import require_in_place

    if why := cannot_write(options.out_dir):
        raise UserError(f"the comparison report cannot be written ({why}); put it elsewhere with --out DIR")
    specs = (options.a, options.b)
    if not all(Path(spec).is_dir() for spec in specs):  # a study run (or a study file's): read from the store,
        require_in_place(options.tracking_uri, "dlbench compare")  # its study file from the artifacts
    sides = [comparison.load_side(spec, options.tracking_uri, list(options.only) or None) for spec in specs]
    present = {study for side in sides for study in comparison.studies_of(side)}
    for study in options.only:
        if study not in present:
            raise UserError(f"--study {study!r}: neither side has trials of it; "
                            f"{choose_one_of(study, sorted(present)) if present else 'neither side has any trial'}")
    result = comparison.compare(*sides, metric=options.metric, margin=options.margin, alpha=options.alpha)
    write_comparison(result, options.out_dir, options.gate)
    return result


def export_study(options: ExportOptions):
    """``dlbench export``: the study run and every run under it, with the environment, the data
    version and the local plugin files, written to one zip archive; returns the
    :class:`dlbench.tracking.export.Exported` (the archive, its runs and its checksum)."""
    from dlbench.tracking.export import export_archive  # mlflow: imported only to read a store

    return export_archive(options)


def import_study(options: ImportOptions):
    """``dlbench import``: an archive of ``dlbench export`` checked whole, then its runs made in
    the target store (those already there skipped); returns the
    :class:`dlbench.tracking.archive_import.Imported` (the new study run id, how many runs were made)."""
    from dlbench.tracking.archive_import import import_archive  # mlflow: imported only to write a store

    return import_archive(options)


def build_reports(options: ReportOptions, announce: Callable[[str, Path], None]) -> tuple[str, list[Path]]:
    """``dlbench report``: the reports of a study run rebuilt from MLflow alone; returns the
    study run's id and the report folders (``announce(study, folder)`` as each is written)."""
    from dlbench.report import report_from_mlflow  # seaborn and mlflow: imported only to draw
    from dlbench.report.build import study_run_identity
    from dlbench.report.painter import Painter, spare_processes
    from dlbench.tracking.reader import find_study_run
    from dlbench.tracking.relocate import require_in_place

    given = (options.study_file, options.run_id, options.experiment)
    if sum(x is not None for x in given) > 1:
        raise UserError("name the study run once: a STUDY_FILE, --run-id or --experiment")
    default_plugins, experiment = Path("plugins"), options.experiment
    if options.study_file is not None:
        sf = read_study_file(options.study_file)
        experiment = sf.name
        default_plugins = sf.path.parent / "plugins"  # as `run` does: used when it is there
    if why := cannot_write(options.reports_dir):  # a read-only checkout
        raise UserError(f"the reports cannot be written ({why}); put them elsewhere with --reports-dir DIR")
    uri = options.tracking_uri
    # a store copied or moved as a folder: its artifacts read from (and the report attached to) the old one's
    require_in_place(uri, "dlbench report")
    parent = find_study_run(uri, run_id=options.run_id, experiment=experiment)
    identity = study_run_identity(uri, parent)  # a report folder of another study file's study is not overwritten
    only = list(options.only)
    identity.check(options.reports_dir, only or identity.studies,
                   doing=f"this report of study run {parent} of {identity.tail or identity.study_file}")
    registry = plugins_for(options.plugins_dir, default_plugins).registry
    painter = Painter(spare_processes())  # the figures of a large study drawn side by side on the cores
    try:
        folders = report_from_mlflow(uri, parent, options.reports_dir, only or None, attach=options.attach,
                                     registry=registry, announce=announce, painter=painter, identity=identity)
    finally:
        painter.close()
    if not folders:
        raise UserError(f"study run {parent} has no trial runs: nothing to report")
    return parent, folders


def study_status(options: StatusOptions):
    """``dlbench status``: where a study run stands, from the store alone (it may run in another
    process or on another machine); a :class:`dlbench.tracking.status.StudyStatus`."""
    from dlbench.results import require_store
    from dlbench.tracking.reader import find_study_run  # mlflow: imported only to read a store
    from dlbench.tracking.status import read_status

    if options.study_file is not None and options.run_id is not None:
        raise UserError("name the study run once: a STUDY_FILE or --run-id")
    require_store(options.tracking_uri)  # MLflow would make an empty store and find nothing in it
    experiment = read_study_file(options.study_file).name if options.study_file is not None else None
    return read_status(options.tracking_uri, find_study_run(options.tracking_uri, options.run_id, experiment))


def list_plugins(plugins_dir: Path | None, kind: str | None) -> list[tuple[str, list[str]]]:
    """``dlbench plugins list``: (heading, lines) for each kind of plugin, or for ``kind`` alone."""
    registry = plugins_for(plugins_dir, Path("plugins")).registry
    kinds = list(KINDS.values())
    if kind is not None and kind not in kinds:
        raise UserError(f"--kind {kind!r}: {choose_one_of(kind, kinds)}")
    return plugin_listing(registry, kind)


def show_plugin(name: str, plugins_dir: Path | None) -> str:
    """``dlbench plugins show``: the page of plugin ``name`` (KIND:NAME when several kinds have it)."""
    return component_page(plugins_for(plugins_dir, Path("plugins")).registry.lookup(name))


def check_plugins(target: str, options: dict, plugins_dir: Path | None) -> tuple[list, str]:
    """``dlbench plugins check``: the contract's outcomes for component ``target`` (a name, or a
    plugin file: every component it registers), with ``options`` given to those that take them;
    and the summary line (every status counted)."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UserError(f"{target}: no such plugin file")
        loaded = load_plugins(plugins_dir, required_dir=plugins_dir is not None, files=(path,))
        components = [c for c in loaded.registry if c.origin == f"local ({path})"]
        if not components:
            raise UserError(f"{target} registers no component (no dlbench_register_* hook registered anything)")
    else:
        loaded = plugins_for(plugins_dir, Path("plugins"))
        components = [loaded.registry.lookup(target)]
    unknown = [k for k in options if not any(k in c.options for c in components)]
    if unknown:
        raise UserError(f"--option {unknown[0]}: no checked component has this option "
                        f"({', '.join(f'{c.kind}:{c.name}' for c in components)})")
    outcomes = [outcome for component in components
                for outcome in check(component, loaded.registry,
                                     {k: v for k, v in options.items() if k in component.options})]
    return outcomes, summary(outcomes, len(components))


def prepare_data(data_dir: Path, names: tuple[str, ...], use_dvc: bool, plugins_dir: Path | None):
    """``dlbench data prepare``: (name, folder, sha256) of each dataset written to ``data_dir``,
    and the DVC pointer that tracks the folder (None without ``use_dvc``)."""
    registry = plugins_for(plugins_dir, Path("plugins")).registry
    written = prepare(registry, data_dir, list(names) or BUILTIN_PREPARED)
    return written, track(data_dir) if use_dvc else None
