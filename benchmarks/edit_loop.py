"""The edit loop of a study or plugin author, as whole processes: `dlbench run STUDY --dry-run`
(expansion, the preflight of every distinct config, the stacks table) and `dlbench plugins check
NAME` of a built-in, against the floor any PyTorch tool pays (`python -c "import torch"`), measured
in the same run, interleaved.

    python benchmarks/edit_loop.py [--study ablation.toml] [--component mlp] [--repeats 5] [--record]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from record import Summary, add_record_option  # benchmarks/record.py

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="ablation.toml")
    ap.add_argument("--component", default="mlp")
    ap.add_argument("--repeats", type=int, default=5)
    add_record_option(ap)
    args = ap.parse_args()
    summary = Summary("edit_loop", args)
    ways = {
        "import torch (the floor)": [sys.executable, "-c", "import torch"],
        f"run {args.study} --dry-run": [sys.executable, "-m", "dlbench.cli", "run", args.study, "--dry-run"],
        f"plugins check {args.component}": [sys.executable, "-m", "dlbench.cli", "plugins", "check", args.component],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for cmd in ways.values():  # a warm-up of each: the page cache, the bytecode
        timed(cmd)
    for _ in range(args.repeats):
        for name, cmd in ways.items():
            times[name].append(timed(cmd))
    floor = statistics.median(times["import torch (the floor)"])
    summary.line(f"whole processes, median of {args.repeats}, interleaved:")
    for name, values in times.items():
        med = statistics.median(values)
        summary.line(f"  {name:<32} {med:5.2f} s  ({min(values):.2f}-{max(values):.2f})  {med / floor:.1f}x the floor")
    summary.done()


if __name__ == "__main__":
    main()
