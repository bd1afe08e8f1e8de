"""How close the ETA a running study publishes comes to the time it actually had left, against a progress bar's.

For each study file: `dlbench run STUDY` as a fresh process with a fresh SQLite store and reports
folder (on the repository's prepared ``data/``), while this script polls the store every
``--poll`` seconds for the progress the run publishes to its study run (the JSON tag
``dlbench.progress`` that `dlbench status` reads back) and keeps every distinct snapshot. The
actual end of training is the ``updated`` time of the first snapshot with every trial done (the
last trial's end). At each fraction f of ``--fractions``, from the first snapshot seen with
done >= f x total:

* ``dlbench``: the ETA the run published (``eta_s``; an unknown one counts as a miss);
* ``naive``: what a plain progress bar (tqdm) would show from the same snapshot:
  elapsed x (total - done) / done;

each against the time actually left (the end - the snapshot's ``updated``): the signed error
(ETA - actual) / actual, and whether it is within 25%. ``|err| dlbench/naive``: dlbench's absolute
error over the naive one's (below 1: dlbench's ETA is the closer).

    python benchmarks/eta_accuracy.py [STUDY ...] [--fractions 0.25 0.5] [--poll 0.2] [--jobs N] [-- RUN_OPTION ...]

STUDY defaults to ablation.toml and benchmarks/studies/lr_sweep_500.toml (relative to the
repository); the options after ``--`` go to `dlbench run` as they are (e.g. ``-- --stack-size 1``).
Prints a table per study and a summary line; ``--record`` writes a row per study.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from record import Summary, add_record_option  # benchmarks/record.py

REPO = Path(__file__).resolve().parent.parent
STUDIES = [REPO / "ablation.toml", REPO / "benchmarks" / "studies" / "lr_sweep_500.toml"]
PROGRESS_TAG = "dlbench.progress"  # dlbench/tracking/study_run.py
WITHIN = 0.25


@dataclass(frozen=True)
class Snapshot:
    progress: dict  # as published
    seen: float  # this script's clock when it first read it

    @property
    def done(self) -> int:
        return self.progress["done"]

    @property
    def total(self) -> int:
        return self.progress["total"]


class ProgressReader:
    """The progress published to the study run of the SQLite store ``db``, read with MLflow's client
    once the study run exists (before that, a read-only look with sqlite3: an MLflow client opened on
    a store still being made would make its tables too, racing the run that makes them)."""

    def __init__(self, db: Path):
        self.db, self.uri = db, f"sqlite:///{db}"
        self.client = None
        self.run_id: str | None = None

    def _study_run_made(self) -> bool:
        if not self.db.exists():
            return False
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1) as con:
                return con.execute("SELECT 1 FROM tags WHERE key = 'dlbench.role' AND value = 'study' "
                                   "LIMIT 1").fetchone() is not None
        except sqlite3.Error:  # no tables yet, or locked: next time
            return False

    def read(self) -> dict | None:
        """The progress last published, or None (no store, no study run or no progress yet; a read
        that failed)."""
        try:
            if self.run_id is None:
                if not self._study_run_made():
                    return None
                if self.client is None:
                    from mlflow.tracking import MlflowClient

                    self.client = MlflowClient(self.uri)
                experiments = [e.experiment_id for e in self.client.search_experiments()]
                runs = self.client.search_runs(experiments, "tags.`dlbench.role` = 'study'", max_results=1)
                if not runs:
                    return None
                self.run_id = runs[0].info.run_id
            text = self.client.get_run(self.run_id).data.tags.get(PROGRESS_TAG)
            return json.loads(text) if text else None
        except Exception:  # the store busy (SQLite locked), a tag half written: next time
            return None

    def last_trial_end(self) -> float | None:
        """The latest end time of the study run's trial runs (Unix seconds), as a check of the end."""
        if self.client is None or self.run_id is None:
            return None
        experiment = self.client.get_run(self.run_id).info.experiment_id
        runs = self.client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{self.run_id}'",
                                       max_results=10000)
        ends = [r.info.end_time for r in runs if r.info.end_time]
        return max(ends) / 1000 if ends else None


def run_study(study: Path, run_options: list[str], poll: float,
              keep: Path | None = None) -> tuple[list[Snapshot], float | None, float, float]:
    """Train ``study`` in a fresh store while polling its progress: (the distinct snapshots in the
    order seen, the trial runs' latest end time, the process's wall seconds, the CPU seconds this
    process spent polling). ``keep``: a folder to copy the run's log and the snapshots (JSON lines)
    into."""
    with tempfile.TemporaryDirectory(prefix="eta_accuracy.") as tmp:
        tmp = Path(tmp)
        reader = ProgressReader(tmp / "mlflow.db")
        cmd = [sys.executable, "-m", "dlbench.cli", "run", str(study), "--tracking-uri", reader.uri,
               "--reports-dir", str(tmp / "reports"), "--checkpoint-dir", str(tmp / "checkpoints"),
               "--data-dir", str(REPO / "data"), *run_options]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        log = tmp / "run.log"
        snapshots: list[Snapshot] = []
        last = None
        start, cpu = time.perf_counter(), _cpu()
        with open(log, "w") as out:  # a file, not a pipe: nothing blocks the run while this polls
            # cwd: the temporary folder, so nothing the run writes by default lands in the repository
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            try:
                while True:
                    exited = proc.poll() is not None
                    progress = reader.read()  # once more after the exit: the last progress published
                    if progress is not None and progress != last:
                        snapshots.append(Snapshot(progress, time.time()))
                        last = progress
                    if exited:
                        break
                    time.sleep(poll)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        wall, cpu = time.perf_counter() - start, _cpu() - cpu
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, keep / f"{study.stem}.log")
            (keep / f"{study.stem}.snapshots.jsonl").write_text(
                "".join(json.dumps({"seen": s.seen, **s.progress}) + "\n" for s in snapshots))
        if proc.returncode != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
            sys.exit(f"{shlex.join(cmd)}\nfailed (exit code {proc.returncode}); the end of its log:\n{tail}")
        try:
            last_end = reader.last_trial_end()
        except Exception:
            last_end = None
        return snapshots, last_end, wall, cpu


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def error(eta: float | None, actual: float) -> float | None:
    """(eta - actual) / actual; None when the ETA is unknown or nothing was left."""
    if eta is None or actual <= 0:
        return None
    return (eta - actual) / actual


def pct(err: float | None) -> str:
    return "-" if err is None else f"{err * 100:+.0f}%"


def secs(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds:.1f}s"


def within(err: float | None) -> str:
    return "yes" if err is not None and abs(err) <= WITHIN else "no"


def ratio(ours: float | None, naive: float | None) -> str:
    if ours is None or naive is None:
        return "-"
    if naive == 0:
        return "0 = 0" if ours == 0 else "inf"
    return f"{abs(ours) / abs(naive):.2f}x"


def at_fraction(snapshots: list[Snapshot], fraction: float) -> Snapshot | None:
    """The first snapshot seen with done >= fraction x total (and not every trial done)."""
    return next((s for s in snapshots if s.done >= fraction * s.total and s.done < s.total), None)


def study_report(study: Path, snapshots: list[Snapshot], last_end: float | None, wall: float, cpu: float, poll: float,
                 fractions: list[float], run_options: list[str], summary: Summary) -> list[tuple | None]:
    """Print the study's table through ``summary``; return (dlbench error, naive error) per fraction
    (an error None: the ETA unknown), None for a fraction no snapshot was seen at."""
    options = f" {shlex.join(run_options)}" if run_options else ""
    final = next((s for s in snapshots if s.done == s.total), None)
    if final is None:
        summary.line(f"{study.name}{options}: no snapshot with every trial done among the {len(snapshots)} seen "
                     f"(the run published none?)")
        return [None for _ in fractions]
    end, total = final.progress["updated"], final.total
    check = "" if last_end is None else f"; last trial run ended {last_end - end:+.1f}s from it in the store"
    summary.line(f"{study.name}{options}: {total} trials, training {final.progress['elapsed_s']:.1f}s "
                 f"(process {wall:.1f}s), {len(snapshots)} distinct snapshots polled every {poll}s "
                 f"(the polling: {cpu:.1f} CPU s)")
    print(f"  end = the first snapshot with {total}/{total} done, updated at {final.progress['elapsed_s']:.1f}s"
          f"{check}")
    header = (f"{'at':>4} {'done':>8} {'t':>7} {'actual left':>11} | {'dlbench ETA':>11} {'error':>6} {'<=25%':>5} | "
              f"{'naive ETA':>9} {'error':>6} {'<=25%':>5} | {'|err| dlbench/naive':>19}")
    summary.line(header)
    errors = []
    for fraction in fractions:
        snap = at_fraction(snapshots, fraction)
        if snap is None:
            summary.line(f"{fraction:>4.0%} no snapshot seen with {fraction:.0%} to {total - 1}/{total} done")
            errors.append(None)
            continue
        p = snap.progress
        actual = end - p["updated"]
        eta = p["eta_s"]
        naive = p["elapsed_s"] * (p["total"] - p["done"]) / p["done"] if p["done"] else None
        ours, theirs = error(eta, actual), error(naive, actual)
        errors.append((ours, theirs))
        summary.line(f"{fraction:>4.0%} {p['done']:>4}/{p['total']:<3} {p['elapsed_s']:>6.1f}s {actual:>10.1f}s | "
                     f"{secs(eta):>11} {pct(ours):>6} {within(ours):>5} | {secs(naive):>9} {pct(theirs):>6} "
                     f"{within(theirs):>5} | {ratio(ours, theirs):>19}")
    return errors


def main() -> None:
    argv = sys.argv[1:]
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 usage="%(prog)s [STUDY ...] [options] [-- RUN_OPTION ...]")
    ap.add_argument("studies", nargs="*", type=Path, help="study files (default: ablation.toml, lr_sweep_500.toml)")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5],
                    help="compare the ETAs once this fraction of the trials is done")
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between two reads of the store")
    ap.add_argument("--jobs", "-j", default=None, help="dlbench run --jobs (default: its own, auto)")
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR",
                    help="keep each run's log and the snapshots seen (STUDY.log, STUDY.snapshots.jsonl) in DIR")
    add_record_option(ap)
    args = ap.parse_args(argv)
    studies = [s if s.is_absolute() else REPO / s for s in args.studies] or STUDIES
    for study in studies:
        if not study.is_file():
            ap.error(f"no study file {study}")
    run_options = (["--jobs", args.jobs] if args.jobs else []) + passed
    if not (REPO / "data").is_dir():
        subprocess.run([sys.executable, "-m", "dlbench.cli", "data", "prepare", "--no-dvc"], cwd=REPO, check=True)

    results: list[list[tuple | None]] = []  # per study, per fraction
    for study in studies:
        print(f"running {study.relative_to(REPO) if study.is_relative_to(REPO) else study} ...", flush=True)
        snapshots, last_end, wall, cpu = run_study(study, run_options, args.poll, args.keep)
        name = study.name + (f" ({shlex.join(run_options)})" if run_options else "")
        summary = Summary(f"eta_accuracy {name}", args)
        summary.command = shlex.join(["python", "benchmarks/eta_accuracy.py", str(study.relative_to(REPO))
                                      if study.is_relative_to(REPO) else str(study),
                                      *(["--fractions", *map(str, args.fractions)]
                                        if args.fractions != [0.25, 0.5] else []),
                                      *(["--poll", str(args.poll)] if args.poll != 0.2 else []),
                                      *(["--", *run_options] if run_options else [])])
        results.append(study_report(study, snapshots, last_end, wall, cpu, args.poll, args.fractions,
                                            run_options, summary))
        summary.done()
        print()

    pairs = [e for errs in results for e in errs]
    unseen = sum(e is None for e in pairs)
    pairs_seen = [e for e in pairs if e is not None]
    hits = sum(ours is not None and abs(ours) <= WITHIN for ours, _ in pairs_seen)
    naive_hits = sum(theirs is not None and abs(theirs) <= WITHIN for _, theirs in pairs_seen)
    known = [(o, t) for o, t in pairs_seen if o is not None and t is not None]
    line = (f"summary: {len(studies)} studies x {len(args.fractions)} fractions: dlbench ETA within 25% "
            f"{hits}/{len(pairs)} (unknown {sum(o is None for o, _ in pairs_seen)}), naive {naive_hits}/{len(pairs)}"
            + (f" ({unseen} with no snapshot seen)" if unseen else ""))
    if known:
        ours, theirs = (sum(abs(o) for o, _ in known) / len(known), sum(abs(t) for _, t in known) / len(known))
        line += (f"; mean |error| where both known: dlbench {ours * 100:.0f}%, naive {theirs * 100:.0f}% "
                 f"(dlbench/naive {ratio(ours, theirs)})")
    print(line)


if __name__ == "__main__":
    main()
