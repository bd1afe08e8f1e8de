"""Cost of the training diagnostics, measured against the same trial without them, in one run.

Trains the same trial (MNIST-1D on the device, evaluation every epoch) with ``diagnostics_every``
= 0 (off) and at several intervals, interleaved so that machine noise hits every variant alike,
for two models: the dropout study's MLP (2 x 256) and the deepest activation_depth MLP (8 x 128,
sigmoid). Diagnostics go through the plugin hooks to a sink that keeps them (``--mlflow`` adds
the MLflow tracker writing to a fresh SQLite store, for the logging cost). Also measures the
``dlbench_after_backward`` call itself when nobody implements it, against a loop without it.

    python benchmarks/diagnostics.py [--epochs 10] [--repeats 5] [--device auto] [--mlflow] [--threads 1]

Prints the median seconds per variant, its ratio to diagnostics off, and the share of the trial's
time spent inside the observer (timed directly: the overhead, readable on a noisy machine).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import torch

from dlbench import hookimpl
from dlbench.config import parse_study_file
from dlbench.datacache import DataCache
from dlbench.diagnostics import Diagnostics
from dlbench.plugins import load_plugins
from dlbench.execution import resolve_device
from dlbench.study import Plan, expand
from dlbench.train import build, run_trial, seed_everything, train_epoch
from record import Summary, add_record_option  # benchmarks/record.py

INTERVALS = [0, 100, 50, 25, 10]
MODELS = {  # [baseline] lines of each benchmarked trial
    "mlp 2x256 relu adam": 'architecture = { name = "mlp", depth = 2, width = 256 }\nactivation = "relu"\n'
                           'optimizer = { name = "adam", lr = 0.002 }',
    "mlp 8x128 sigmoid sgd": 'architecture = { name = "mlp", depth = 8, width = 128 }\nactivation = "sigmoid"\n'
                             'optimizer = { name = "sgd", lr = 0.05, momentum = 0.9 }',
}


def study_text(model: str, epochs: int) -> str:
    """One study, one level per diagnostics interval, the same trial otherwise."""
    levels = "\n".join(f"every{n} = {{ diagnostics_every = {n} }}" for n in INTERVALS)
    return (f'[study]\nname = "diagnostics-benchmark"\nseeds = [0]\n[baseline]\n{model}\nepochs = {epochs}\n'
            f"batch_size = 128\n[studies.bench.levels]\n{levels}\n")


class TimedDiagnostics(Diagnostics):
    """The observer, timing itself: the seconds spent inside it (early returns included) are the
    overhead, measured directly, so it stays readable when the machine is noisy."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds = 0.0

    @hookimpl
    def dlbench_after_backward(self, trial, model, optimizer, step, data):
        t0 = time.perf_counter()
        super().dlbench_after_backward(trial, model, optimizer, step, data)
        if data.x_train.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0


class Sink:
    """Keeps what the diagnostics emit, as a tracker would receive it."""

    def __init__(self):
        self.values = 0

    @hookimpl
    def dlbench_diagnostics(self, trial, step, values):
        self.values += len(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--mlflow", action="store_true", help="also log to MLflow (SQLite) in every variant")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch (1: steadier timings on a shared machine)")
    add_record_option(ap)
    args = ap.parse_args()
    summary = Summary(f"diagnostics ({args.device})", args)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    summary.line(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
                 f"{args.epochs} epochs, median of {args.repeats}, interleaved")

    for model_name, model in MODELS.items():
        text = study_text(model, args.epochs)
        sf = parse_study_file(tomllib.loads(text), Path("bench.toml"), text)
        plugins = load_plugins(None, autoload=False)
        trials = expand(sf, plugins.registry)
        data = DataCache().get(plugins.registry.get("dataset", "mnist1d"), {}, trials[0].config["val_fraction"], device)
        sink = Sink()
        plugins.pm.register(sink, name="sink")
        observer = TimedDiagnostics(plugins.hook, plugins.registry)
        plugins.pm.register(observer, name="diagnostics")
        with tempfile.TemporaryDirectory() as tmp:
            if args.mlflow:
                from dlbench.tracking import Tracker

                tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "diagnostics-benchmark")
                tracker.start_study(sf, Plan(trials), device)
                plugins.pm.register(tracker, name="tracker")
            run_trial(trials[0], plugins.registry, data, device, plugins.hook)  # warm-up
            times = {t.level: [] for t in trials}
            inside = {t.level: [] for t in trials}  # share of the trial's time spent in the observer
            for _ in range(args.repeats):
                for trial in trials:
                    sync()
                    observer.seconds = 0.0
                    t0 = time.perf_counter()
                    run_trial(trial, plugins.registry, data, device, plugins.hook)
                    if args.mlflow:
                        tracker.flush()
                    sync()
                    times[trial.level].append(time.perf_counter() - t0)
                    inside[trial.level].append(observer.seconds / times[trial.level][-1])
        steps = args.epochs * math.ceil(len(data.y_train) / trials[0].config["batch_size"])
        off = statistics.median(times["every0"])
        summary.line(f"\n{model_name}: {steps} optimizer steps" + (" (+ MLflow SQLite logging)" if args.mlflow else ""))
        for trial in trials:
            n = trial.config["diagnostics_every"]
            med = statistics.median(times[trial.level])
            label = "diagnostics off" if n == 0 else f"every {n:>3} steps ({1 + steps // n} records)"
            share = statistics.median(inside[trial.level])
            summary.line(f"  {label:<32} {med:7.2f} s   {med / off:.3f}x   in the observer: {100 * share:5.2f}% of the trial")

    hook_call_cost(device, args.epochs, args.repeats)
    summary.done()

def hook_call_cost(device, epochs: int, repeats: int) -> None:
    """The loop with ``hook=None`` against the loop calling a hook nobody implements."""
    text = study_text(MODELS["mlp 2x256 relu adam"], epochs)
    sf = parse_study_file(tomllib.loads(text), Path("bench.toml"), text)
    plugins = load_plugins(None, autoload=False)
    trial = expand(sf, plugins.registry)[0]
    data = DataCache().get(plugins.registry.get("dataset", "mnist1d"), {}, trial.config["val_fraction"], device)
    seed_everything(0)
    model, regs, opt, sched = build(trial, plugins.registry, data, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {"no hook": [], "hook, no implementation": []}
    for _ in range(repeats):
        for name, hook in (("no hook", None), ("hook, no implementation", plugins.hook)):
            sync()
            t0 = time.perf_counter()
            for _ in range(epochs):
                train_epoch(model, regs, opt, sched, data, 128, hook, trial)
            sync()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["no hook"])
    print(f"\ntraining loop only (mlp 2x256, {epochs} epochs, no evaluation):")
    for name, ts in times.items():
        print(f"  {name:<32} {statistics.median(ts):7.2f} s   {statistics.median(ts) / base:.3f}x")


if __name__ == "__main__":
    main()
