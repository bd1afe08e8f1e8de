"""The ``dlbench`` command. Thin: parsing options and printing; the work lives elsewhere.

Heavy imports (torch, mlflow, pandas) happen inside the commands so ``dlbench --help`` is instant.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import click

DEVICE_HELP = "auto (every GPU when there is one), cpu, cuda (every GPU) or cuda:N (that one)."


class UsageProblem(click.ClickException):
    """A user mistake: printed as one paragraph, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _user_errors(fn):
    """Turn dlbench.errors.UserError into a clean exit-2 message (or the error's own ``exit_code``:
    75 for a tracking server that stayed away, to try again later)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dlbench.errors import UserError

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            problem = UsageProblem(str(exc))
            problem.exit_code = getattr(exc, "exit_code", UsageProblem.exit_code)
            raise problem from None

    return wrapper


def _load_plugins(plugins_dir: Path | None, default: Path):
    """Plugins with the local folder the user named (which must exist) or the default one (if any)."""
    from dlbench.plugins import load_plugins

    return load_plugins(plugins_dir if plugins_dir is not None else default, required_dir=plugins_dir is not None)


def _default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


class AutoInt(click.ParamType):
    """A positive integer, or ``auto`` (None: decided from the machine)."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value is None or value == "auto":
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            self.fail(f"{value!r}: use auto or a whole number >= 1", param, ctx)
        return number


class ResourceRequest(click.ParamType):
    """``cpu=1,gpu=0.5``: what each unit of work asks Ray for, as ``{"cpu": 1.0, "gpu": 0.5}``."""

    name = "cpu=N,gpu=N"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        given: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in str(value).split(","))):
            name, sep, amount = (x.strip() for x in part.partition("="))
            try:
                number = float(amount) if sep else float("nan")
            except ValueError:
                number = float("nan")
            if name.lower() not in ("cpu", "gpu") or not number >= 0 or (name.lower() == "cpu" and number == 0):
                self.fail(f"{part!r} is not a resource request. Write cpu=N and/or gpu=N, comma-separated, "
                          "e.g. cpu=1,gpu=0.5 (each unit of work asks Ray for 1 CPU and half a GPU); cpu must be "
                          "above 0", param, ctx)
            given[name.lower()] = number
        return given


tracking_option = click.option(
    "--tracking-uri", default=None, metavar="URI",
    help="MLflow tracking store. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (MLflow's default).")
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True,
    help="Prepared datasets, tracked by DVC through <data-dir>.dvc next to it.")
plugins_dir_option = click.option(
    "--plugins-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder of local plugin modules (*.py). Default: plugins/ next to the study file.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dlbench")
def main() -> None:
    """dlbench: deep-learning ablation studies you can trust.

    Write a study in TOML, run it with `dlbench run ablation.toml`, compare the runs in the
    MLflow UI (`dlbench ui`) and read the report in reports/<study>/.
    """
    atexit.register(_freeze_before_finalization)  # first registered, so it runs after every other exit handler


def _freeze_before_finalization() -> None:
    """Spare the interpreter's finalization its garbage collections: at exit Python collects
    every object the imports made (torch, mlflow, pandas, seaborn: 300,000-400,000 that the
    collector tracks) several times over, 1.3-2.5 s of every command on a 2-core machine, to
    hand back memory the OS takes back anyway. Frozen (``gc.freeze``), they are still released
    one by one as the modules are torn down, after every other exit handler has run; only
    garbage caught in reference cycles keeps its finalizers unrun, and a command has ended its
    runs, written its files and joined its processes before it returns."""
    gc.freeze()


@main.command()
@click.argument("study_file", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the expanded trials and exit without training.")
@tracking_option
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@plugins_dir_option
@click.option("--study", "only", multiple=True, metavar="NAME", help="Run only this study of the file (repeatable).")
@click.option("--reports-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
              show_default=True, help="Where reports/<study>/ folders are written.")
@click.option("--fail-fast", is_flag=True,
              help="Stop at the first trial that fails (in file order: --jobs defaults to 1; with --jobs N, "
                   "the work already running finishes).")
@click.option("--force", is_flag=True, help="Re-run trials that already finished in the store (new runs).")
@click.option("--deterministic/--nondeterministic", default=True, show_default=True,
              help="Deterministic kernels: the same config and seed give bit-identical metrics.")
@data_dir_option
@click.option("--allow-data-mismatch", is_flag=True,
              help="Run even when data/ differs from data.dvc (the runs are tagged dlbench.data_matches_dvc=false).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".dlbench/checkpoints"), show_default=True,
              help="Epoch-end checkpoints of running trials, for resuming after a crash.")
@click.option("--checkpoint-every", default=10.0, show_default=True, type=click.FloatRange(min=0.0),
              metavar="SECONDS", help="Save a running trial's checkpoint at the first epoch end this long after the last.")
@click.option("--jobs", "-j", default="auto", show_default=True, type=AutoInt(),
              help="Worker processes training trials at once (1: all in this process). auto: one per CPU core, "
                   "two per GPU, never more than there is work.")
@click.option("--stack-size", default="auto", show_default=True, type=AutoInt(),
              help="Most trials trained together as one stacked model (1: none). auto: 1 on a CPU, 128 on a GPU.")
@click.option("--cuda-graphs", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Replay a stack's training steps from CUDA graphs (same results, far fewer launches). auto: "
                   "on a GPU; stacks whose optimizer or regularizers are not graph-safe step eagerly.")
@click.option("--tracking-timeout", default=None, type=click.FloatRange(min=0.0), metavar="SECONDS",
              help="How long a tracking server may stay unreachable before dlbench stops (exit code 75; the same "
                   "command resumes the study). Training goes on meanwhile. Default: 600.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine's cores and GPUs (--jobs). ray: each unit of work a Ray task, on the "
                   "cluster at --address or on a new local one (pip install 'dlbench[ray]').")
@click.option("--address", default=None, metavar="ADDRESS",
              help="With --executor ray: the cluster to join (auto, HOST:6379, ray://HOST:10001). "
                   "Default: a new local Ray cluster for this run.")
@click.option("--resources", default=None, metavar="cpu=N,gpu=N", type=ResourceRequest(),
              help="With --executor ray: what each unit of work asks Ray for. Default: cpu=1, and gpu=0.5 when "
                   "the cluster has GPUs (two units per GPU). --jobs caps the units running at once.")
@click.option("--max-retries", default=3, show_default=True, type=click.IntRange(min=0),
              help="With --executor ray: how many times Ray runs a unit again (from its checkpoint) when its "
                   "worker dies; after that its trials are left KILLED, and a re-run resumes them.")
@_user_errors
def run(study_file: Path, dry_run: bool, tracking_uri: str | None, device: str, plugins_dir: Path | None,
        only: tuple[str, ...], reports_dir: Path, fail_fast: bool, force: bool, deterministic: bool,
        data_dir: Path, allow_data_mismatch: bool, checkpoint_dir: Path, checkpoint_every: float,
        jobs: int | None, stack_size: int | None, cuda_graphs: str, tracking_timeout: float | None, executor: str,
        address: str | None, resources: dict | None, max_retries: int) -> None:
    """Run every trial of STUDY_FILE, log it to MLflow and write the report.

    Trials that already finished in the store (same config hash) are skipped, and trials left
    running by a killed process resume from their last epoch, so re-running the same command
    after a crash completes the study without duplicating a run. Trials that share a training
    loop (the seeds of a level, levels differing in numbers such as a learning rate) train
    together as one stacked model; --dry-run shows the stacks.
    """
    from dlbench.config import read_study_file
    from dlbench.study import expand_plan

    sf = read_study_file(study_file)
    plugins = _load_plugins(plugins_dir, sf.path.parent / "plugins")
    plan = expand_plan(sf, plugins.registry, list(only) or None)

    from dlbench.runner import resolve_devices
    from dlbench.workers import start_method

    ray = _ray_settings(executor, address, resources, max_retries, device)
    devices = [torch_device(device)] if ray else resolve_devices(device)  # a Ray cluster has its own GPUs
    if cuda_graphs == "on" and not ray and devices[0].type != "cuda":
        from dlbench.errors import UserError

        raise UserError(f"--cuda-graphs on replays training steps from CUDA graphs, which need a GPU, but this run "
                        f"trains on the CPU (--device {device}). Leave --cuda-graphs at auto (graphs wherever there "
                        f"is a GPU), or give --device cuda on a machine with one.")
    if not dry_run:  # a read-only checkout: say which option puts each output elsewhere, before any work
        from dlbench.paths import check_report_folders, check_run_outputs

        check_run_outputs(tracking_uri or _default_uri(), reports_dir, checkpoint_dir)
        # a report folder of another study file's study of the same name is not overwritten
        check_report_folders(reports_dir, sf.path.resolve(), plan.studies, sf.name, doing=f"this run of {sf.path}")
    with ExitStack() as cleanup:
        ray_pool = None
        if ray and not dry_run:  # first: Ray's workers start and load while the preflight runs
            from dlbench.runner import start_ray

            ray_pool = start_ray(ray, plugins, plan.to_check(), data_dir=data_dir, deterministic=deterministic,
                                 checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, jobs=jobs,
                                 fail_fast=fail_fast, cuda_graphs=cuda_graphs)
            cleanup.callback(ray_pool.close)
        workers = None
        if not ray and not dry_run and start_method([str(d) for d in devices]) == "spawn":
            # spawned workers (a GPU's) take seconds to import torch and start CUDA: they do it
            # while the preflight runs (forked ones start in milliseconds, after it)
            from dlbench.runner import start_workers

            workers = start_workers(plan.trials, plugins, devices, jobs=jobs, fail_fast=fail_fast,
                                    stack_size=stack_size, searches=plan.searches, data_dir=data_dir,
                                    deterministic=deterministic, checkpoint_dir=checkpoint_dir,
                                    checkpoint_every=checkpoint_every, cuda_graphs=cuda_graphs)
            if workers is not None:
                cleanup.callback(workers.close, now=True)
        _run_checked(sf, plan, plugins, dry_run, devices, tracking_uri, reports_dir, fail_fast, force,
                     deterministic, data_dir, checkpoint_dir, checkpoint_every, allow_data_mismatch, jobs,
                     stack_size, tracking_timeout, ray_pool, workers, cuda_graphs)


def _run_checked(sf, plan, plugins, dry_run, devices, tracking_uri, reports_dir, fail_fast, force, deterministic,
                 data_dir, checkpoint_dir, checkpoint_every, allow_data_mismatch, jobs, stack_size, tracking_timeout,
                 ray_pool, workers, cuda_graphs) -> None:
    """`run` past its options: the preflight, then the dry run's table or the study itself."""
    from dlbench.preflight import preflight
    from dlbench.runner import run_study

    # every distinct component built once on a tiny batch: a plugin that raises stops us here,
    # before any worker trains or any run is logged
    trials = plan.trials
    checked = preflight(sf, plan.to_check(), plugins.registry, data_dir=data_dir)
    if dry_run:
        from dlbench.stacking import plan as stacks
        from dlbench.stacking import stack_settings

        if trials:
            from dlbench.study import first_of_each_config

            max_size, graphs = stack_settings(devices[0], stack_size, cuda_graphs)
            same = first_of_each_config(trials)  # identical trials train once: the first
            works = stacks([t for t in trials if t.index not in same], plugins.registry, max_size, graphs)
            click.echo(trial_table(sf, trials, works, plugins.registry, graphs))
        if plan.searches:
            from dlbench.tuning.search import describe_plan

            click.echo(("\n" if trials else "") + describe_plan(plan.searches))
            click.echo(f"\n{plan.total} trials in all from {sf.path} (dry run: nothing trained)")
        click.echo(str(checked))
        return
    click.echo(str(checked))
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` closes runs like Ctrl-C does
    try:
        result = run_study(sf, trials, plugins, device=devices[0], devices=devices,
                           tracking_uri=tracking_uri or _default_uri(),
                           reports_dir=reports_dir, stream=sys.stdout, fail_fast=fail_fast, force=force,
                           deterministic=deterministic, data_dir=data_dir, checkpoint_dir=checkpoint_dir,
                           checkpoint_every=checkpoint_every,
                           allow_data_mismatch=allow_data_mismatch, jobs=jobs, stack_size=stack_size,
                           tracking_timeout=tracking_timeout, ray_pool=ray_pool, workers=workers,
                           searches=plan.searches,
                           cuda_graphs=cuda_graphs)
    except KeyboardInterrupt:
        click.echo("\nInterrupted: the finished trials are in MLflow; the running one is marked KILLED.", err=True)
        sys.exit(130)
    finished, diverged, failed, interrupted, pruned = (result.count(s) for s in ("finished", "diverged", "failed",
                                                                                 "interrupted", "pruned"))
    others = f", {result.by_others} by other processes" if result.by_others else ""
    elsewhere = f", {result.busy} still running in another process" if result.busy else ""
    stopped = f", {interrupted} interrupted" if interrupted else ""
    stopped += f", {pruned} pruned" if pruned else ""
    already = f"{result.skipped_finished} of them already in the store{others}"
    if result.shared:
        already += f", {result.shared} recorded from an identical trial of this file"
    if result.reused:
        already += f", {result.reused} reused from an earlier study run"
    click.echo(f"\n{finished} finished ({already}), {diverged} diverged, "
               f"{failed} failed{stopped}, {result.total - len(result.results) - result.busy} not run{elsewhere}. "
               f"MLflow parent run: {result.parent_run_id}")
    from dlbench.paths import folder_name

    studies = {folder_name(s): s for s in plan.studies}
    for folder in result.reports:
        click.echo(report_line(studies.get(folder.name, folder.name), folder))
    if interrupted:
        click.echo(f"{interrupted} trial(s) were interrupted when their worker died (their runs are KILLED, their "
                   "checkpoints kept): run the same command again to resume them.", err=True)
    if failed:
        click.echo("Some trials failed; their tracebacks are in each run's error.txt artifact.", err=True)
    if failed or interrupted:
        sys.exit(1)


def _ray_settings(executor: str, address: str | None, resources: dict | None, max_retries: int, device: str):
    """``--executor ray`` and its options, checked; None for the local executor."""
    from dlbench.errors import UserError
    from dlbench.runner import RaySettings

    if executor != "ray":
        given = [name for name, value in (("--address", address), ("--resources", resources)) if value]
        if given:
            raise UserError(f"{given[0]} is an option of --executor ray; add --executor ray, or leave it out")
        return None
    return RaySettings(address=address, resources=resources or {}, device=device, max_retries=max_retries)


def torch_device(spec: str):
    """The device a Ray cluster's tasks train on, as this process can tell before joining it
    (``auto``: the cluster decides)."""
    import torch

    return torch.device("cuda" if spec.startswith("cuda") else "cpu")


def report_line(study: str, folder: Path, html: bool = False) -> str:
    """``report: reports/<folder>/index.md``, and which study it is when its folder is not named
    as the study is (a name such as ``../x`` or ``a/b`` gets a safe folder)."""
    line = f"report: {folder / 'index.md'}" + (f"  ({folder / 'index.html'})" if html else "")
    return line if folder.name == study else f"{line}  (study {study!r})"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def trial_table(sf, trials, works, registry, graphs: bool = False) -> str:
    """One table per study: the trials with what varies between them (the study's factors) and
    the stack each trains in; then why the trials that train alone do, which members of a stack
    initialize at once (greedy pretraining) and, with CUDA graphs, why a stack steps eagerly."""
    from dlbench.stacking import initializer_groups, why_eager
    from dlbench.study import first_of_each_config, identical_levels

    stack_of, alone = {}, []
    for number, work in enumerate(works, start=1):
        for t in work.members:
            stack_of[t.index] = f"S{number}({len(work.members)})" if work.stacked else "alone"
        if not work.stacked:
            alone.append(f"  #{work.members[0].index} {work.members[0].run_name}: {work.alone_because}")
    same = first_of_each_config(trials)
    for index, first in same.items():
        stack_of[index] = f"= #{first.index}"
    blocks = []
    for study in dict.fromkeys(t.study for t in trials):
        group = [t for t in trials if t.study == study]
        varied = _varied_keys(group)
        header = ["#", "level", "seed", "config_hash", "stack", *varied]
        rows = [[str(t.index), t.level, str(t.seed), t.config_hash[:12], stack_of[t.index],
                 *[_flat(t).get(k, "") for k in varied]] for t in group]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        blocks.append(f"study {study!r} ({len(group)} trials)\n" + "\n".join(lines))
    stacks = sum(w.stacked for w in works)
    summary = (f"{len(works)} units of work: {stacks} stacks (S<n>(members): trained together as one model) "
               f"and {len(alone)} trials alone" + (f"; {len(same)} trials the same as an earlier one (= #n: trained "
                                                    "once, recorded under both)" if same else ""))
    if alone:
        summary += ":\n" + "\n".join(alone)
    if any(len(w.members) == 1 and w.stacked for w in works):
        summary += "\nOn a GPU, a stack of one (S<n>(1)) replays its steps from CUDA graphs."
    together = [f"  S{n}: {w.members[group[0]].config['initializer']['name']}, {len(group)} of its "
                f"{len(w.members)} members at once" for n, w in enumerate(works, start=1) if w.stacked
                for group, _ in initializer_groups(w, registry)]
    if together:
        summary += "\nmembers initialized at once (a stacked initializer, the same options):\n" + "\n".join(together)
    if graphs:
        eager = [f"  S{n}: {why}" for n, w in enumerate(works, start=1)
                 if w.stacked and (why := why_eager(w.members[0], registry))]
        if eager:
            summary += "\nstacks that step eagerly (no CUDA graphs):\n" + "\n".join(eager)
    pairs = identical_levels(trials)
    if pairs:
        summary += ("\nlevels that resolve to the same configuration (equal config hashes): a trial of the second "
                    "trains once, as the first's (= #n), and is recorded under its own study; within one study their "
                    "difference is zero by construction:\n"
                    + "\n".join(f"  {a} = {b} ({n} seed{'s' if n != 1 else ''} in common)" for a, b, n in pairs))
    studies = len({t.study for t in trials})
    in_studies = f"{studies} study" if studies == 1 else f"{studies} studies"
    return ("\n\n".join(blocks) + f"\n\n{summary}\n\n{len(trials)} trials in {in_studies} from {sf.path} "
            "(dry run: nothing trained)")


def _flat(trial) -> dict[str, str]:
    from dlbench.study import flatten

    return flatten({k: v for k, v in trial.config.items() if k != "seed"})


def _varied_keys(trials) -> list[str]:
    """The config keys whose values differ between trials: what the study varies."""
    flats = [_flat(t) for t in trials]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]


@main.command()
@click.argument("run_id")
@tracking_option
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@plugins_dir_option
@data_dir_option
@click.option("--tolerance", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Largest absolute difference of any metric value still counted as reproduced.")
@_user_errors
def reproduce(run_id: str, tracking_uri: str | None, device: str, plugins_dir: Path | None, data_dir: Path,
              tolerance: float) -> None:
    """Re-run the trial of MLflow run RUN_ID from what the run recorded and compare every metric.

    Exits 0 when every logged value is reproduced within --tolerance, 1 when not.
    """
    from dlbench.reproduce import reproduce as do_reproduce
    from dlbench.runner import resolve_device

    plugins = _load_plugins(plugins_dir, Path("plugins"))
    verdict = do_reproduce(run_id, plugins, tracking_uri=tracking_uri or _default_uri(),
                           device=resolve_device(device), tolerance=tolerance, data_dir=data_dir, stream=sys.stdout)
    for note in verdict.warnings:
        click.echo(f"warning: {note}", err=True)
    key, step, diff = verdict.largest
    word = "REPRODUCED" if verdict.reproduced else "NOT REPRODUCED"
    click.echo(f"{word}: {verdict.compared} metric values compared, largest difference {diff:.3g} "
               f"({key or '-'} at step {step}), tolerance {tolerance:g}. Re-run logged as {verdict.rerun}.")
    if verdict.mismatched_steps:
        click.echo(f"metrics whose logged steps differ: {', '.join(verdict.mismatched_steps)}")
    sys.exit(0 if verdict.reproduced else 1)


@main.command()
@click.argument("study_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run-id", default=None, metavar="ID", help="The study (parent) run to report on.")
@click.option("--experiment", default=None, metavar="NAME",
              help="Report on the latest study run of this MLflow experiment (a study file's [study] name).")
@tracking_option
@plugins_dir_option
@click.option("--study", "only", multiple=True, metavar="NAME", help="Report only this study (repeatable).")
@click.option("--reports-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
              show_default=True, help="Where reports/<study>/ folders are written.")
@click.option("--no-attach", is_flag=True, help="Do not attach the report to the study run as artifacts.")
@_user_errors
def report(study_file: Path | None, run_id: str | None, experiment: str | None, tracking_uri: str | None,
           plugins_dir: Path | None, only: tuple[str, ...], reports_dir: Path, no_attach: bool) -> None:
    """Build the reports of a study run from MLflow alone, into reports/<study>/.

    Which run: --run-id; else the latest study run of STUDY_FILE (its [study] name is the
    experiment) or of --experiment; else the latest study run in the store. Each report is
    also attached to that run as artifacts (reports/<study>/).
    """
    from dlbench.errors import UserError
    from dlbench.tracking.reader import find_study_run

    if sum(x is not None for x in (study_file, run_id, experiment)) > 1:
        raise UserError("name the study run once: a STUDY_FILE, --run-id or --experiment")
    default_plugins = Path("plugins")
    if study_file is not None:
        from dlbench.config import read_study_file

        sf = read_study_file(study_file)
        experiment = sf.name
        default_plugins = sf.path.parent / "plugins"  # as `run` does: used when it is there
    from dlbench.paths import cannot_write

    if why := cannot_write(reports_dir):  # a read-only checkout
        raise UserError(f"the reports cannot be written ({why}); put them elsewhere with --reports-dir DIR")
    uri = tracking_uri or _default_uri()
    parent = find_study_run(uri, run_id=run_id, experiment=experiment)
    from dlbench.report import report_from_mlflow
    from dlbench.report.build import study_run_identity
    from dlbench.report.painter import Painter, spare_processes

    identity = study_run_identity(uri, parent)  # a report folder of another study file's study is not overwritten
    identity.check(reports_dir, list(only) or identity.studies,
                   doing=f"this report of study run {parent} of {identity.tail or identity.study_file}")

    registry = _load_plugins(plugins_dir, default_plugins).registry
    painter = Painter(spare_processes())  # the figures of a large study drawn side by side on the cores
    try:
        folders = report_from_mlflow(uri, parent, reports_dir, list(only) or None, attach=not no_attach,
                                     registry=registry, announce=lambda s, f: click.echo(report_line(s, f, html=True)),
                                     painter=painter, identity=identity)
    finally:
        painter.close()
    if not folders:
        raise UserError(f"study run {parent} has no trial runs: nothing to report")
    click.echo(f"from MLflow study run {parent} in {uri}" + ("" if no_attach else "; attached to it as artifacts"))


@main.group()
def data() -> None:
    """Prepare the datasets in data/ and check them against data.dvc."""


@data.command("prepare")
@data_dir_option
@click.option("--dataset", "names", multiple=True, metavar="NAME",
              help="Dataset to prepare (repeatable). Default: mnist1d and digits.")
@click.option("--dvc/--no-dvc", "use_dvc", default=True, show_default=True,
              help="Track the folder with DVC (`dvc add`, initializing DVC where needed).")
@plugins_dir_option
@_user_errors
def data_prepare(data_dir: Path, names: tuple[str, ...], use_dvc: bool, plugins_dir: Path | None) -> None:
    """Write datasets to DATA_DIR (one folder each: .npy arrays and meta.json) and `dvc add` it."""
    from dlbench.datastore import BUILTIN_PREPARED, prepare, track

    plugins = _load_plugins(plugins_dir, Path("plugins"))
    for name, folder, digest in prepare(plugins.registry, data_dir, list(names) or BUILTIN_PREPARED):
        click.echo(f"{name}: {folder} (sha256 {digest[:16]}...)")
    if use_dvc:
        click.echo(f"tracked by DVC: {track(data_dir)} (commit it with git)")


@data.command("verify")
@data_dir_option
@_user_errors
def data_verify(data_dir: Path) -> None:
    """Check DATA_DIR against its .dvc pointer with DVC; exit 1 and name what differs."""
    from dlbench.datastore import status

    st = status(data_dir)
    if st.matches:
        click.echo(f"{data_dir} matches {st.pointer} (md5 {st.md5}; compared by {st.check})")
        return
    what = "is missing" if st.missing else "differs: " + ", ".join(st.modified)
    click.echo(f"{data_dir} {what} (recorded in {st.pointer}: md5 {st.md5}; compared by {st.check})", err=True)
    sys.exit(1)


@main.group()
def plugins() -> None:
    """Inspect the registered plugins."""


@plugins.command("list")
@plugins_dir_option
@click.option("--kind", default=None, help="Only this kind (architecture, optimizer, ...).")
@_user_errors
def plugins_list(plugins_dir: Path | None, kind: str | None) -> None:
    """Print every registered plugin by kind, with its origin and options."""
    from dlbench.errors import UserError, choose_one_of
    from dlbench.plugins import KINDS
    from dlbench.schema import MISSING, describe
    from dlbench.stacking import component_stacks

    loaded = _load_plugins(plugins_dir, Path("plugins"))
    kinds = list(KINDS.values())
    if kind is not None and kind not in kinds:
        raise UserError(f"--kind {kind!r}: {choose_one_of(kind, kinds)}")
    plurals = {k: plural for plural, k in KINDS.items()}
    for k in kinds if kind is None else [kind]:
        click.secho(plurals[k], bold=True)
        for c in (c for c in loaded.registry if c.kind == k):
            stacks = {True: "  (stacks)", False: "  (trains alone)", None: ""}[component_stacks(c)]
            click.echo(f"  {c.name:<20} [{c.origin}]  {c.description}{stacks}")
            for opt in c.options.values():
                default = "required" if opt.default is MISSING else f"default {opt.default!r}"
                click.echo(f"  {'':<20}   {opt.name}: {describe(opt.annotation)}, {default}")


@plugins.command("show")
@click.argument("name")
@plugins_dir_option
@_user_errors
def plugins_show(name: str, plugins_dir: Path | None) -> None:
    """Print the documentation of plugin NAME (KIND:NAME when several kinds have that name):
    its docstring, origin, source line, options, whether it stacks and a study-file line."""
    from dlbench.docs import component_page

    click.echo(component_page(_load_plugins(plugins_dir, Path("plugins")).registry.lookup(name)))


class OptionValue(click.ParamType):
    """``KEY=VALUE`` with VALUE a TOML value (``lr=0.1``, ``betas=[0.9, 0.99]``); anything that
    is no TOML value is a string (``path=data/x.npz``)."""

    name = "KEY=VALUE"

    def convert(self, value, param, ctx):
        import tomllib

        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            self.fail(f"{value!r}: write KEY=VALUE, e.g. --option lr=0.1", param, ctx)
        try:
            return key.strip(), tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return key.strip(), text


@plugins.command("check")
@click.argument("target", metavar="NAME|PATH")
@click.option("--option", "options", multiple=True, type=OptionValue(),
              help="An option of the checked component, KEY=VALUE (repeatable), e.g. a dataset's file.")
@plugins_dir_option
@_user_errors
def plugins_check(target: str, options: tuple[tuple[str, object], ...], plugins_dir: Path | None) -> None:
    """Run the plugin contract (dlbench/contract.py) on component NAME (KIND:NAME when several
    kinds have it), or on every component the plugin file PATH registers.

    Prints one line per check and exits 1 when a check fails.
    """
    from dlbench.contract import FAIL, PASS, SKIP, check
    from dlbench.errors import UserError

    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UserError(f"{target}: no such plugin file")
        from dlbench.plugins import load_plugins

        loaded = load_plugins(plugins_dir, required_dir=plugins_dir is not None, files=(path,))
        components = [c for c in loaded.registry if c.origin == f"local ({path})"]
        if not components:
            raise UserError(f"{target} registers no component (no dlbench_register_* hook registered anything)")
    else:
        loaded = _load_plugins(plugins_dir, Path("plugins"))
        components = [loaded.registry.lookup(target)]
    given = dict(options)
    unknown = [k for k in given if not any(k in c.options for c in components)]
    if unknown:
        raise UserError(f"--option {unknown[0]}: no checked component has this option "
                        f"({', '.join(f'{c.kind}:{c.name}' for c in components)})")
    outcomes = []
    for component in components:
        for outcome in check(component, loaded.registry, {k: v for k, v in given.items() if k in component.options}):
            click.echo(str(outcome))
            outcomes.append(outcome.status)
    failed = outcomes.count(FAIL)
    click.echo(f"{len(outcomes)} checks of {len(components)} component{'s' if len(components) > 1 else ''}: "
               f"{outcomes.count(PASS)} passed, {failed} failed, {outcomes.count(SKIP)} skipped (not applicable)")
    sys.exit(1 if failed else 0)


@main.command()
@tracking_option
@click.option("--port", default=5000, show_default=True, help="Port on 127.0.0.1 (for a local store).")
@_user_errors
def ui(tracking_uri: str | None, port: int) -> None:
    """Open the MLflow UI on 127.0.0.1 for the same store `dlbench run` writes to.

    A tracking server (http://...) serves its own UI: ui says where and exits.
    """
    uri = tracking_uri or _default_uri()
    from dlbench.tracking.server import is_server, require_reachable

    if is_server(uri):  # `mlflow ui` cannot read a server; the server is a UI already
        require_reachable(uri)
        click.echo(f"{uri} is an MLflow tracking server: it serves the MLflow UI itself. Open {uri} in a browser "
                   "(through an SSH tunnel: its local end, e.g. http://127.0.0.1:5000), click \"Model training\" "
                   "at the top left once, then an experiment. `dlbench ui` starts a UI only for a local store "
                   "(a SQLite file or a directory).")
        return
    click.echo(f"MLflow UI for {uri} at http://127.0.0.1:{port} (Ctrl-C to stop); click \"Model training\" at the "
               "top left once, then an experiment: its runs (MLflow 3 opens on GenAI traces otherwise)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port)]
    server = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` must not orphan the server on the port
    try:
        sys.exit(server.wait())
    except KeyboardInterrupt:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        sys.exit(0)


if __name__ == "__main__":
    main()
