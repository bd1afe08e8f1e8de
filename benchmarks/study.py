"""A whole `dlbench run` as a user runs it, in several ways, measured side by side.

Each way runs `dlbench run STUDY` as a fresh process with a fresh SQLite store and reports
folder (imports, the data check, the store, training and the reports all counted) on the
repository's prepared ``data/``. The ways are interleaved over repetitions.

    python benchmarks/study.py [--study ablation.toml] [--repeats 2] [--baseline-tree DIR] [--ways ...]

Ways: ``default`` (--jobs auto, stacks), ``jobs1`` (--jobs 1: stacks in one process), ``serial``
(--jobs 1 --stack-size 1: one process, one trial at a time, as before stacks and workers), ``ray``
(--executor ray: the units as Ray tasks on a local Ray cluster of this machine's cores);
``--baseline-tree DIR`` adds ``baseline``: the dlbench source tree in DIR (e.g. a git worktree
of an older commit) run the same way, for a before/after on the same machine in the same run.
Prints the median wall time of each, the spread, each way's speed-up over the first, and the CPU
time every process of the run used (a steadier figure on a machine whose speed drifts).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from record import Summary, add_record_option  # benchmarks/record.py

REPO = Path(__file__).resolve().parents[1]
WAYS = {"default": [], "jobs1": ["--jobs", "1"], "serial": ["--jobs", "1", "--stack-size", "1"],
        "ray": ["--executor", "ray"]}


def run_once(study: Path, extra: list[str], pythonpath: str | None, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process tree: user + system)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        env.pop("MLFLOW_TRACKING_URI", None)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        cmd = [sys.executable, "-m", "dlbench.cli", "run", str(study), "--tracking-uri", f"sqlite:///{tmp}/m.db",
               "--reports-dir", f"{tmp}/reports", "--checkpoint-dir", f"{tmp}/ckpt", "--data-dir", str(REPO / "data"),
               "--device", device, *extra]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        # cwd outside the repository: `python -m` puts the cwd first on sys.path, and the
        # baseline's PYTHONPATH must win over this checkout's dlbench
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, default=REPO / "ablation.toml")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ways", nargs="+", default=["serial", "jobs1", "default"], choices=list(WAYS))
    ap.add_argument("--baseline-tree", type=Path, default=None,
                    help="another dlbench source tree to run first as 'baseline' (e.g. a worktree of main before)")
    ap.add_argument("--device", default="auto")
    add_record_option(ap)
    args = ap.parse_args()
    summary = Summary(f"study {args.study.name}: {' '.join(args.ways)}", args)
    if not (REPO / "data").is_dir():
        subprocess.run([sys.executable, "-m", "dlbench.cli", "data", "prepare", "--no-dvc"], cwd=REPO, check=True)
    ways = {name: (WAYS[name], None) for name in args.ways}
    if args.baseline_tree:
        ways = {"baseline": ([], str(args.baseline_tree.resolve())), **ways}
    times: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.repeats):
        for name, (extra, pythonpath) in ways.items():
            wall, used = run_once(args.study.resolve(), extra, pythonpath, args.device)
            times[name].append(wall)
            cpu[name].append(used)
            print(f"  repeat {r + 1}: {name:<9} {wall:6.1f} s  ({used:.0f} CPU s)", flush=True)
    first = next(iter(ways))
    trials = _trial_count(args.study.resolve())
    summary.line(f"\n`dlbench run {args.study.name}` whole (fresh store, reports included), {os.cpu_count()} CPUs, "
                 f"median of {args.repeats}:")
    for name, values in times.items():
        med = statistics.median(values)
        summary.line(f"  {name:<9} {med:6.1f} s  ({min(values):.1f}-{max(values):.1f})  "
                     f"{statistics.median(times[first]) / med:.2f}x vs {first} "
                     f"({(med - statistics.median(times[first])) / trials * 1000:+.0f} ms per trial);  "
                     f"CPU {statistics.median(cpu[name]):.0f} s (user + system, every process)")
    summary.done()

def _trial_count(study: Path) -> int:
    from dlbench.config import read_study_file
    from dlbench.plugins import load_plugins
    from dlbench.study import expand

    return len(expand(read_study_file(study), load_plugins(None, autoload=False).registry))


if __name__ == "__main__":
    main()
