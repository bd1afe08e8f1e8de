"""The ``dlbench`` command. Thin: each command maps its options to one settings object
(``settings.py``), makes one library call (``session.py``) and prints what comes back.

``dlbench.session`` (torch, the plugins) is imported inside the commands, and mlflow and
seaborn further down only where needed, so that ``dlbench --help`` is instant.
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
import signal
import sys
import time
import tomllib
import webbrowser
from pathlib import Path

import click

from dlbench.errors import UserError
from dlbench.paths import folder_name
from dlbench.settings import (CompareOptions, ExportOptions, ImportOptions, ReportOptions, ReproduceOptions,
                              RaySettings, RunOptions, StatusOptions, StudyReproduceOptions, default_tracking_uri)

DEVICE_HELP = "auto (every GPU when there is one), cpu, cuda (every GPU) or cuda:N (that one)."


class UsageProblem(click.ClickException):
    """A user mistake: printed as one paragraph, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def _user_errors(fn):
    """Turn dlbench.errors.UserError into a clean exit-2 message (or the error's own ``exit_code``:
    75 for a tracking server that stayed away, to try again later)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            problem = UsageProblem(str(exc))
            problem.exit_code = getattr(exc, "exit_code", UsageProblem.exit_code)
            raise problem from None

    return wrapper


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
def run(**given) -> None:
    """Run every trial of STUDY_FILE, log it to MLflow and write the report.

    Trials that already finished in the store (same config hash) are skipped, and trials left
    running by a killed process resume from their last epoch, so re-running the same command
    after a crash completes the study without duplicating a run. Trials that share a training
    loop (the seeds of a level, levels differing in numbers such as a learning rate) train
    together as one stacked model; --dry-run shows the stacks.
    """
    options = run_options(given)
    from dlbench import session  # torch and the plugins: not for --help

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` closes runs like Ctrl-C does
    try:
        result = session.run_file(options, sys.stdout)
    except KeyboardInterrupt:
        click.echo("\nInterrupted: the finished trials are in MLflow; the running one is marked KILLED.", err=True)
        sys.exit(130)
    if result is not None:
        _print_summary(result)


def run_options(given: dict) -> RunOptions:
    """`dlbench run`'s options (named as the fields of :class:`RunOptions`) as its settings."""
    ray = _ray_settings(given.pop("executor"), given.pop("address"), given.pop("resources"),
                        given.pop("max_retries"), given["device"])
    return RunOptions(**(given | {"tracking_uri": given["tracking_uri"] or default_tracking_uri(), "ray": ray}))


def _print_summary(result) -> None:
    """The tally of a study run, its report folders, and the exit code (1: a trial failed or was interrupted)."""
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
    studies = {folder_name(s): s for s in result.studies}
    for folder in result.reports:
        click.echo(report_line(studies.get(folder.name, folder.name), folder))
    if interrupted:
        click.echo(f"{interrupted} trial(s) were interrupted when their worker died (their runs are KILLED, their "
                   "checkpoints kept): run the same command again to resume them.", err=True)
    if failed:
        click.echo("Some trials failed; their tracebacks are in each run's error.txt artifact.", err=True)
    if failed or interrupted:
        sys.exit(1)


def _ray_settings(executor: str, address: str | None, resources: dict | None, max_retries: int,
                  device: str) -> RaySettings | None:
    """``--executor ray`` and its options, checked; None for the local executor."""
    if executor != "ray":
        given = [name for name, value in (("--address", address), ("--resources", resources)) if value]
        if given:
            raise UserError(f"{given[0]} is an option of --executor ray; add --executor ray, or leave it out")
        return None
    return RaySettings(address=address, resources=resources or {}, device=device, max_retries=max_retries)


def report_line(study: str, folder: Path, html: bool = False) -> str:
    """``report: reports/<folder>/index.md``, and which study it is when its folder is not named
    as the study is (a name such as ``../x`` or ``a/b`` gets a safe folder)."""
    line = f"report: {folder / 'index.md'}" + (f"  ({folder / 'index.html'})" if html else "")
    return line if folder.name == study else f"{line}  (study {study!r})"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


STUDY_ONLY = {"jobs": "--jobs", "reports_dir": "--reports-dir", "allow_data_mismatch": "--allow-data-mismatch"}


@main.command()
@click.argument("run_id")
@click.option("--study", "whole_study", is_flag=True,
              help="RUN_ID is a study run: re-run its whole study into a new study run and compare every trial.")
@tracking_option
@click.option("--device", default=None,
              help=f"{DEVICE_HELP} Default: auto; with --study, the kind of device the study trained on.")
@plugins_dir_option
@data_dir_option
@click.option("--tolerance", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Largest absolute difference of any metric value still counted as reproduced (one trial).")
@click.option("--jobs", "-j", default=None, type=click.IntRange(min=1),
              help="With --study: worker processes training trials at once. Default: as many as the study ran with.")
@click.option("--reports-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --study: where the reproduction's <study>/ report folders are written. Default: "
                   "reports/reproductions/<the first 8 characters of RUN_ID>/.")
@click.option("--allow-data-mismatch", is_flag=True,
              help="With --study: run even when data/ differs from data.dvc (the runs are tagged as such).")
@_user_errors
def reproduce(**given) -> None:
    """Re-run the trial of MLflow run RUN_ID from what the run recorded and compare every metric.

    Exits 0 when every logged value is reproduced within --tolerance, 1 when not.

    With --study, RUN_ID is a study run: its whole study (the study file it attached, its
    options, plugins and data) trains again into a new study run tagged dlbench.reproduces, and
    each trial is compared with the original's value by value, then the two study runs as
    `dlbench compare` does. Exits 0 when every trial is bit-identical where bits are expected
    (the same platform, device, torch and threads), or elsewhere when the comparison passes
    (every claim's verdict agrees, every level equivalent); 1 when not.
    """
    uri = given.pop("tracking_uri") or default_tracking_uri()
    if given.pop("whole_study"):
        return _reproduce_study(given, uri)
    if used := [flag for key, flag in STUDY_ONLY.items() if given.pop(key)]:
        raise UserError(f"{used[0]} is an option of a whole study's reproduction: add --study (RUN_ID a study "
                        "run), or leave it out")
    tolerance = given["tolerance"]
    options = ReproduceOptions(run_id=given["run_id"], tracking_uri=uri, device=given["device"] or "auto",
                               plugins_dir=given["plugins_dir"], data_dir=given["data_dir"], tolerance=tolerance)
    from dlbench import session  # torch and the plugins: not for --help

    verdict = session.reproduce_run(options, sys.stdout)
    for note in verdict.warnings:
        click.echo(f"warning: {note}", err=True)
    key, step, diff = verdict.largest
    word = "REPRODUCED" if verdict.reproduced else "NOT REPRODUCED"
    click.echo(f"{word}: {verdict.compared} metric values compared, largest difference {diff:.3g} "
               f"({key or '-'} at step {step}), tolerance {tolerance:g}. Re-run logged as {verdict.rerun}.")
    if verdict.mismatched_steps:
        click.echo(f"metrics whose logged steps differ: {', '.join(verdict.mismatched_steps)}")
    sys.exit(0 if verdict.reproduced else 1)


def _reproduce_study(given: dict, uri: str) -> None:
    """``dlbench reproduce --study``: the whole study again, each trial's line, the summary; exits."""
    if given["tolerance"]:
        raise UserError("--tolerance is for one trial's reproduction: --study compares every trial bit for bit, "
                        "and says where bits cannot be expected (another device or machine); leave it out")
    options = StudyReproduceOptions(run_id=given["run_id"], tracking_uri=uri, device=given["device"],
                                    jobs=given["jobs"], plugins_dir=given["plugins_dir"], data_dir=given["data_dir"],
                                    allow_data_mismatch=given["allow_data_mismatch"],
                                    reports_dir=given["reports_dir"])
    from dlbench import session  # torch and the plugins: not for --help

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` closes runs like Ctrl-C does
    try:
        result = session.reproduce_study(options, sys.stdout)
    except KeyboardInterrupt:
        click.echo("\nInterrupted: the reproduction's study run is left KILLED; the same command starts a new one.",
                   err=True)
        sys.exit(130)
    for note in result.warnings:
        click.echo(f"warning: {note}", err=True)
    click.echo("")
    for trial in result.trials:
        click.echo(trial.line())
    click.echo(result.summary())
    click.echo(f"reproduction: study run {result.reproduction_id} (dlbench.reproduces = {result.original_id}) "
               f"in {result.tracking_uri}")
    for folder in result.reports:
        click.echo(report_line(folder.name, folder))
    from dlbench.comparison import summary  # loaded by the session already

    click.echo(f"\nthe two study runs compared (dlbench compare {result.original_id} {result.reproduction_id}):")
    click.echo(summary(result.comparison), nl=False)
    click.echo(f"report: {result.comparison_dir / 'index.md'} ({result.comparison_dir / 'index.html'})")
    # bit-for-bit: every trial identical; elsewhere: the comparison's verdict
    sys.exit(0 if result.reproduced else 1)


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
    options = ReportOptions(study_file=study_file, run_id=run_id, experiment=experiment,
                            tracking_uri=tracking_uri or default_tracking_uri(), plugins_dir=plugins_dir, only=only,
                            reports_dir=reports_dir, attach=not no_attach)
    from dlbench import session  # torch, mlflow and seaborn: not for --help

    parent, _ = session.build_reports(options, announce=lambda s, f: click.echo(report_line(s, f, html=True)))
    click.echo(f"from MLflow study run {parent} in {options.tracking_uri}"
               + ("" if no_attach else "; attached to it as artifacts"))


@main.command()
@click.argument("study_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run-id", default=None, metavar="ID", help="The study (parent) run to show.")
@tracking_option
@click.option("--watch", type=click.FloatRange(min=0.5), is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]", help="Redraw every SECONDS (default 2) until Ctrl-C.")
@_user_errors
def status(study_file: Path | None, run_id: str | None, tracking_uri: str | None, watch: float | None) -> None:
    """Show where a study run stands, from the store alone (from any terminal or machine).

    Which run: --run-id; else the latest study run of STUDY_FILE; else the latest in the store.
    Prints each study's trials done, running and left, the running trials with their host, epoch
    and process (stale: it died), and the progress and ETA the running process last published.
    Exits 0 whether or not the study is complete.
    """
    from dlbench import session  # mlflow: not for --help
    from dlbench.tracking.status import render

    options = StatusOptions(study_file=study_file, run_id=run_id, tracking_uri=tracking_uri or default_tracking_uri())
    clear = "\x1b[2J\x1b[H" if sys.stdout.isatty() else ""
    try:
        while True:
            shown = render(session.study_status(options), time.time())
            click.echo(clear + shown, nl=False)
            if watch is None:
                return
            click.echo(f"(every {watch:g}s; Ctrl-C to stop)")
            time.sleep(watch)
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@tracking_option
@click.option("--metric", default="test_accuracy", show_default=True,
              help="The final metric each level is compared on.")
@click.option("--margin", default=None, type=click.FloatRange(min=0.0, min_open=True),
              help="Equivalence margin: two means of a level within it of each other are the same result. "
                   "Default: each study file's margin, else 0.02 (for an accuracy).")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0.0, 0.5, min_open=True),
              help="Significance level of the equivalence tests.")
@click.option("--gate", type=click.Choice(["all", "claims"]), default="all", show_default=True,
              help="What must hold for exit 0: all (every claim's verdict agrees and every level is "
                   "equivalent) or claims (every verdict agrees, as many seeds finished on both sides).")
@click.option("--study", "only", multiple=True, metavar="NAME", help="Compare only this study (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("comparison"),
              show_default=True, help="Where the comparison report is written (index.md, index.html, CSV, figure).")
@_user_errors
def compare(**given) -> None:
    """Compare two runs of the same studies: does each level's result, and each claim's verdict, hold?

    A and B are each a study run id, a study file (its latest study run) or a report folder
    (reports/, docs/reference/). Per level: both means, B - A with its 95% interval and an
    equivalence test at a margin; per claim: both verdicts; and what differs in config, data,
    code or machine. Exits 0 when the --gate holds, 1 when not.
    """
    options = CompareOptions(**(given | {"tracking_uri": given["tracking_uri"] or default_tracking_uri()}))
    from dlbench import comparison, session  # mlflow, scipy and seaborn: not for --help

    result = session.compare_runs(options)
    click.echo(comparison.summary(result, options.gate), nl=False)
    click.echo(f"report: {options.out_dir / 'index.md'} ({options.out_dir / 'index.html'})")
    sys.exit(0 if comparison.gate_passed(result, options.gate) else 1)


@main.command()
@click.argument("run_id", required=False)
@click.option("--experiment", default=None, metavar="NAME", help="Export the latest study run of this MLflow experiment.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The archive to write. Default: <experiment>-<first 8 digits of the run id>.zip here.")
@click.option("--force", is_flag=True, help="Replace the archive when the file exists.")
@tracking_option
@click.option("--plugins-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of local plugin modules (*.py) to put in the archive. Default: plugins/ here, when "
                   "there is one.")
@data_dir_option
@click.option("--with-data", is_flag=True, help="Also put the prepared datasets of --data-dir in the archive.")
@_user_errors
def export(run_id: str | None, experiment: str | None, output: Path | None, force: bool, tracking_uri: str | None,
           plugins_dir: Path | None, data_dir: Path, with_data: bool) -> None:
    """Write a study run, every run under it and what reproducing it needs to one zip archive.

    RUN_ID is the study (parent) run; without it, the latest study run (of --experiment). The
    archive holds the runs (params, tags, every logged metric value with its step and time,
    artifacts and reports), the environment, the data version (data.dvc, dataset hashes) and
    the local plugin files; `dlbench import` recreates the runs in any store.
    """
    options = ExportOptions(run_id=run_id, experiment=experiment, output=output, force=force,
                            tracking_uri=tracking_uri or default_tracking_uri(), plugins_dir=plugins_dir,
                            data_dir=data_dir, with_data=with_data)
    from dlbench import session  # mlflow: not for --help

    done = session.export_study(options)
    click.echo(f"exported study run {done.study_run_id} of experiment {done.experiment!r} from "
               f"{options.tracking_uri}: {done.runs} runs, {done.files} files, {_size(done.size)} -> {done.path}")
    click.echo(f"plugins: {done.plugins}; data: {done.data}")
    click.echo(f"manifest sha256: {done.sha256} (publish it with the archive; imported runs carry it as "
               "dlbench.imported_archive)")
    if done.running:
        click.echo(f"warning: {done.running} of the runs were still RUNNING: they are archived as they were and "
                   "import as KILLED (tag dlbench.imported_status = RUNNING)", err=True)


def _size(size: int) -> str:
    """A byte count as people read it: 812 B, 3.4 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


@main.command("import")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@tracking_option
@click.option("--experiment", default=None, metavar="NAME",
              help="The experiment to import into (made when missing). Default: the one exported from, by name.")
@_user_errors
def import_(archive: Path, tracking_uri: str | None, experiment: str | None) -> None:
    """Recreate the runs of an archive of `dlbench export` in a store.

    The whole archive is checked first (a zip, its manifest, every file's size and SHA-256, no
    path outside the folder it unpacks into); a damaged or altered one is refused and nothing is
    written. The runs keep their parent/child structure, times, metrics and artifacts, and are
    tagged dlbench.imported_from (their original id). Importing again adds no run; an import
    cut short is completed. Nothing in the archive is run.
    """
    options = ImportOptions(archive=archive, tracking_uri=tracking_uri or default_tracking_uri(),
                            experiment=experiment)
    from dlbench import session  # mlflow: not for --help

    done = session.import_study(options)
    again = f" ({done.replaced} of them left half-imported before: made again)" if done.replaced else ""
    click.echo(f"{done.imported} runs imported{again}, {done.present} already present, into "
               f"experiment {done.experiment!r} of {done.tracking_uri} (archive manifest sha256 {done.sha256})")
    click.echo(f"study run: {done.study_run_id} (exported as {done.original_study_run_id}); its reports: "
               f"dlbench report --run-id {done.study_run_id} --tracking-uri {done.tracking_uri}")


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
    from dlbench import session  # torch and the plugins: not for --help

    written, pointer = session.prepare_data(data_dir, names, use_dvc, plugins_dir)
    for name, folder, digest in written:
        click.echo(f"{name}: {folder} (sha256 {digest[:16]}...)")
    if pointer is not None:
        click.echo(f"tracked by DVC: {pointer} (commit it with git)")


@data.command("verify")
@data_dir_option
@_user_errors
def data_verify(data_dir: Path) -> None:
    """Check DATA_DIR against its .dvc pointer with DVC; exit 1 and name what differs."""
    from dlbench.datastore import status  # imports torch (the datasets' arrays)

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
    from dlbench import session  # torch and the plugins: not for --help

    for heading, lines in session.list_plugins(plugins_dir, kind):
        click.secho(heading, bold=True)
        for line in lines:
            click.echo(line)


@plugins.command("show")
@click.argument("name")
@plugins_dir_option
@_user_errors
def plugins_show(name: str, plugins_dir: Path | None) -> None:
    """Print the documentation of plugin NAME (KIND:NAME when several kinds have that name):
    its docstring, origin, source line, options, whether it stacks and a study-file line."""
    from dlbench import session  # torch and the plugins: not for --help

    click.echo(session.show_plugin(name, plugins_dir))


class OptionValue(click.ParamType):
    """``KEY=VALUE`` with VALUE a TOML value (``lr=0.1``, ``betas=[0.9, 0.99]``); anything that
    is no TOML value is a string (``path=data/x.npz``)."""

    name = "KEY=VALUE"

    def convert(self, value, param, ctx):
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
    """Run the plugin contract (dlbench/contract/) on component NAME (KIND:NAME when several
    kinds have it), or on every component the plugin file PATH registers.

    Prints one line per check and exits 1 when a check fails.
    """
    from dlbench import session  # torch and the plugins: not for --help

    outcomes, summary = session.check_plugins(target, dict(options), plugins_dir)
    for outcome in outcomes:
        click.echo(str(outcome))
    failed = sum(o.status == "fail" for o in outcomes)
    click.echo(summary)
    sys.exit(1 if failed else 0)


@main.command()
@tracking_option
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535),
              help="Port on 127.0.0.1 (for a local store); 0: any free one.")
@click.option("--experiment", default=None, metavar="NAME",
              help="Open on this experiment's runs. Default: the experiment of the store's latest run.")
@click.option("--open", "open_browser", is_flag=True, help="Also open the page in this machine's web browser.")
@_user_errors
def ui(tracking_uri: str | None, port: int, experiment: str | None, open_browser: bool) -> None:
    """Serve the MLflow UI of a local store (the one `dlbench run` writes to) on 127.0.0.1, in this
    one process, and print its address once it answers: the runs table of --experiment, or of the
    experiment of the store's latest run. Ctrl-C (or SIGTERM) stops it.

    A store copied or moved from another folder has its artifact locations pointed beside it
    first (`dlbench relocate`). A tracking server (http://...) serves its own UI: ui says where
    and exits.
    """
    uri = tracking_uri or default_tracking_uri()
    from dlbench.tracking.server import is_server, require_reachable  # imports mlflow

    if is_server(uri):  # a server is a UI already; this one only reads local stores
        require_reachable(uri)
        click.echo(f"{uri} is an MLflow tracking server: it serves the MLflow UI itself. Open {uri} in a browser "
                   "(through an SSH tunnel: its local end, e.g. http://127.0.0.1:5000), click \"Model training\" "
                   "at the top left once, then an experiment. `dlbench ui` starts a UI only for a local store "
                   "(a SQLite file or a directory).")
        return
    from dlbench.tracking import relocate as relocation
    from dlbench.tracking import ui_server  # MLflow's server application: seconds to import

    sock = ui_server.bind(port)  # first: a taken port is said at once
    signal.signal(signal.SIGTERM, _interrupt)  # until the server takes SIGINT and SIGTERM over: exit 0 as well
    click.echo(f"Starting the MLflow UI of {uri} (a few seconds; its address follows once it answers)", err=True)
    try:
        os.environ.update(ui_server.server_environment(uri))
        _relocate_for_ui(uri, relocation)
        ui_server.open_store(uri)
        opening = ui_server.choose_experiment(uri, experiment)

        def announce(base: str) -> None:
            url = opening.url(base)
            where = (f"experiment {opening.name!r} ({opening.why}; --experiment NAME for another)"
                     if opening.experiment_id is not None else f"{opening.why}: MLflow's home page")
            click.echo(f"MLflow UI of {uri}, {where}; Ctrl-C to stop:\n  {url}")
            if studies := opening.view_urls(base):  # a study's levels side by side: its saved view
                click.echo("each study's trials grouped by level, accuracies first (Views, top right):")
                width = max(map(len, studies))
                for study, link in studies.items():
                    click.echo(f"  {study:<{width}}  {link}")
            if open_browser:
                webbrowser.open(url)

        started = ui_server.serve(sock, announce)
    except KeyboardInterrupt:  # before the server took over the signals
        sys.exit(0)
    finally:
        sock.close()
    if not started:
        click.echo(f"Error: the MLflow server for {uri} stopped before it answered (see above).", err=True)
        sys.exit(1)
    click.echo("MLflow UI stopped.", err=True)


def _relocate_for_ui(uri: str, relocation) -> None:
    """A store copied or moved as a folder: its artifact locations pointed beside it, said in a
    line (or, where its artifacts are not there, why the UI will not show them)."""
    moves = relocation.moved(uri)
    if any(m.found for m in moves):
        try:
            done, _ = relocation.relocate(uri)
        except UserError as exc:
            click.echo(f"warning: {exc}", err=True)
            return
        for move in done:
            if move.found:
                click.echo(f"store copied or moved here: artifact locations {move.describe()} "
                           f"(as `dlbench relocate` does)", err=True)
    if why := relocation.not_in_place(uri, "the UI"):
        click.echo(f"warning: {why}", err=True)


@main.command()
@tracking_option
@click.option("--dry-run", is_flag=True, help="Say what would be rewritten; change nothing.")
@_user_errors
def relocate(tracking_uri: str | None, dry_run: bool) -> None:
    """Point the artifact locations of a SQLite store that was copied or moved as a folder at
    its own mlruns/ folder.

    MLflow writes absolute artifact paths into mlflow.db. Every one into a folder that is gone
    (a move), or that holds another store's mlflow.db (a copy), is rewritten to the same place
    under mlruns/ beside this database, where its artifacts are found there. Paths that still
    lead to their files and remote locations (s3://, ...) are left alone; running it again
    changes nothing.
    """
    uri = tracking_uri or default_tracking_uri()
    from dlbench.tracking.relocate import ARTIFACTS_FOLDER, relocate as relocate_store

    moves, rewritten = relocate_store(uri, dry_run=dry_run)
    done = [m for m in moves if m.found]
    for move in done:
        click.echo(f"{'would relocate' if dry_run else 'relocated'}: {move.describe()}; the old folder is {move.why}")
    if not moves:
        click.echo(f"nothing to relocate: every local artifact location of {uri} is beside it or in a folder that "
                   "still holds it")
    elif done:
        click.echo(f"{rewritten} artifact locations {'to rewrite' if dry_run else 'rewritten'} in {uri}")
    if missing := [m for m in moves if not m.found]:
        olds = ", ".join(f"{m.old_root / ARTIFACTS_FOLDER}/ ({m.why})" for m in missing)
        raise UserError(f"not relocated: the artifact locations into {olds} name nothing that is in "
                        f"{missing[0].new_root / ARTIFACTS_FOLDER}/ beside the database. Copy the store's whole "
                        f"folder (the database and its {ARTIFACTS_FOLDER}/), then run `dlbench relocate` on the copy.")


if __name__ == "__main__":
    main()
