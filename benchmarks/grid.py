"""A small grid as a whole process: `dlbench run` against a bare script doing the same work.

Six trials (dropout off/on x 3 seeds, MLP 2 x 512, SGD, 20 epochs, batch 64, MNIST-1D): the bare
script is what a researcher writes without a tool (generate the data, train the six one after
another, evaluate every split every epoch, print the test accuracies); dlbench runs the same six
with everything it adds (a fresh MLflow store, provenance, the report). Both are timed as whole
processes, interleaved over repetitions.

    python benchmarks/grid.py [--repeats 3] [--epochs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from record import Summary, add_record_option  # benchmarks/record.py

STUDY = """
[study]
name = "grid"
seeds = 3
[baseline]
architecture = {{ name = "mlp", depth = 2, width = 512 }}
epochs = {epochs}
[studies.dropout.levels]
off = {{}}
on = {{ regularizers = [{{ name = "dropout", p_input = 0.0, p_hidden = 0.5 }}] }}
"""

BARE = """
import numpy as np, torch, torch.nn.functional as F
from torch import nn
from mnist1d.data import get_dataset_args, make_dataset

d = make_dataset(get_dataset_args())
x, y = torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"])
order = np.random.default_rng(0).permutation(len(y))
val, tr = order[:400], order[400:]
splits = {{"train": (x[tr], y[tr]), "val": (x[val], y[val]),
          "test": (torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"]))}}
xt, yt = splits["train"]
for p in (0.0, 0.5):
    for seed in range(3):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(40, 512), nn.ReLU(), nn.Dropout(p), nn.Linear(512, 512), nn.ReLU(),
                              nn.Dropout(p), nn.Linear(512, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for epoch in range({epochs}):
            model.train()
            for idx in torch.randperm(len(yt)).split(64):
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                acc = {{k: (model(a).argmax(1) == b).float().mean().item() for k, (a, b) in splits.items()}}
        print(p, seed, acc["test"])
"""


def timed(cmd: list[str], cwd: Path) -> float:
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--extra", nargs="*", default=[], help="extra `dlbench run` options, e.g. --jobs 1")
    add_record_option(ap)
    args = ap.parse_args()
    summary = Summary("grid", args)
    times: dict[str, list[float]] = {"bare script": [], "dlbench run": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "grid.toml").write_text(textwrap.dedent(STUDY.format(epochs=args.epochs)))
        (root / "bare.py").write_text(BARE.format(epochs=args.epochs))
        for r in range(args.repeats):
            times["bare script"].append(timed([sys.executable, "bare.py"], root))
            for leftover in ("mlflow.db",):
                (root / leftover).unlink(missing_ok=True)
            times["dlbench run"].append(timed([sys.executable, "-m", "dlbench.cli", "run", "grid.toml",
                                               "--checkpoint-dir", str(root / "ckpt"), *args.extra], root))
            print(f"  repeat {r + 1}: bare {times['bare script'][-1]:.1f} s, dlbench {times['dlbench run'][-1]:.1f} s",
                  flush=True)
    bare = statistics.median(times["bare script"])
    summary.line(f"\n6 trials (dropout off/on x 3 seeds, MLP 2x512, {args.epochs} epochs), whole processes, "
                 f"{os.cpu_count()} CPUs, median of {args.repeats}:")
    for name, values in times.items():
        med = statistics.median(values)
        summary.line(f"  {name:<12} {med:6.1f} s  ({min(values):.1f}-{max(values):.1f})  {med / bare:.2f}x the bare script")
    summary.done()


if __name__ == "__main__":
    main()
