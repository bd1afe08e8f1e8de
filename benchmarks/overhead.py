"""Overhead of dlbench over a bare hand-written PyTorch loop, measured in the same run.

Both train the same MLP on MNIST-1D held on the device, for the same epochs, and evaluate
train/val/test loss and accuracy after every epoch. dlbench runs through ``run_trial`` with its
hooks, once with no observer and once with the MLflow tracker writing to a fresh SQLite store.

    python benchmarks/overhead.py [--epochs 20] [--repeats 3] [--device auto]

Prints the median seconds of each and the ratios dlbench / bare. On a GPU, ``dlbench run`` trains
a trial that has no partner to stack with as a stack of one, replaying its steps from CUDA graphs:
that is timed too ("as dlbench run trains it").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.config import parse_study_file
from dlbench.datacache import DataCache
from dlbench.plugins import load_plugins
from dlbench.execution import resolve_device
from dlbench.planning import plan, stack_settings
from dlbench.study import Plan, expand
from dlbench.train import evaluate, run_trial
from dlbench.train_stack import run_stack
from record import Summary, add_record_option  # benchmarks/record.py

STUDY = """
[study]
name = "overhead"
seeds = [0]
[baseline]
architecture = {{ name = "mlp", depth = 2, width = 256 }}
optimizer = {{ name = "adam", lr = 0.002 }}
epochs = {epochs}
batch_size = 128
[studies.bench.levels]
baseline = {{}}
"""


def bare_loop(data, epochs: int, batch_size: int, seed: int) -> float:
    """What a researcher writes by hand: same model, same data on the device, same evaluation."""
    torch.manual_seed(seed)
    width, n_in = 256, data.x_train.shape[1]
    model = nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, data.num_classes)).to(data.x_train.device)
    opt = torch.optim.Adam(model.parameters(), lr=0.002)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(data.y_train), device=data.x_train.device).split(batch_size):
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        metrics = evaluate(model, data)
    return metrics["test_accuracy"]


class NoHooks:
    def __getattr__(self, name):
        return lambda **kwargs: None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    add_record_option(ap)
    args = ap.parse_args()
    summary = Summary(f"overhead ({args.device})", args)
    device = resolve_device(args.device)

    text = STUDY.format(epochs=args.epochs)
    sf = parse_study_file(__import__("tomllib").loads(text), Path("overhead.toml"), text)
    plugins = load_plugins(None, autoload=False)
    trial = expand(sf, plugins.registry)[0]
    cfg = trial.config
    data = DataCache().get(plugins.registry.get("dataset", "mnist1d"), {}, cfg["val_fraction"], device)

    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    from dlbench.tracking import Tracker

    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "overhead")
        tracker.start_study(sf, Plan([trial]), device)

        def tracked():
            plugins.pm.register(tracker, name="tracker")
            try:
                run_trial(trial, plugins.registry, data, device, plugins.hook)
                tracker.flush()
            finally:
                plugins.pm.unregister(name="tracker")

        variants = {
            "bare": lambda: bare_loop(data, args.epochs, cfg["batch_size"], 0),
            "quiet": lambda: run_trial(trial, plugins.registry, data, device, NoHooks()),
            "logged": tracked,
        }
        # what `dlbench run` makes of a lone trial here: on a GPU a stack of one, with graphs
        work = plan([trial], plugins.registry, *stack_settings(device, None, "auto"))[0]
        if work.stacked:
            variants["as run"] = lambda: run_stack(work, plugins.registry, data, device, NoHooks(),
                                                   lambda trial, result: None, cuda_graphs="auto")
        bare_loop(data, 1, 128, 0)  # warm-up: allocator, kernels
        times = {name: [] for name in variants}
        for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
            for name, fn in variants.items():
                times[name].append(once(fn))
        bare, quiet, logged = (statistics.median(times[n]) for n in ("bare", "quiet", "logged"))

    summary.line(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
                 f"{args.epochs} epochs x {len(data.y_train) // cfg['batch_size'] + 1} steps, median of {args.repeats}")
    summary.line(f"bare PyTorch loop        {bare:7.2f} s   1.00x")
    summary.line(f"dlbench run_trial        {quiet:7.2f} s   {quiet / bare:.2f}x")
    summary.line(f"dlbench + MLflow SQLite  {logged:7.2f} s   {logged / bare:.2f}x")
    if "as run" in times:
        graphed = statistics.median(times["as run"])
        summary.line(f"as dlbench run trains it {graphed:7.2f} s   {graphed / bare:.2f}x  (a stack of one, CUDA graphs)")
    summary.done()


if __name__ == "__main__":
    main()
