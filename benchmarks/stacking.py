"""Stacked trials vs one at a time, measured in the same run.

N seeds of the default MLP of ``ablation.toml`` (2 x 128 ReLU, SGD lr 0.05 momentum 0.9, batch
128, MNIST-1D held on the device) trained three ways: a bare hand-written PyTorch loop one trial
after another, dlbench's loop one trial after another (``run_trial``), and dlbench's stack of N
(``run_stack``). No tracking store: this is the training itself.

    python benchmarks/stacking.py [--members 8 50] [--epochs 20] [--repeats 3] [--alone K] [--device auto]

Prints the median seconds per trial (and the spread: min-max over repetitions) of each, and the
ratios: how many times faster the stack is than each one-at-a-time way. On a GPU the stack is
timed twice: stepping eagerly and replaying its steps from CUDA graphs (``--cuda-graphs``). ``--alone K`` times the
one-at-a-time ways on the first K trials only (the figure is per trial either way; on a GPU, 50
trials one at a time twice over would take minutes of the check's time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.config import parse_study_file
from dlbench.datacache import DataCache
from dlbench.plugins import load_plugins
from dlbench.determinism import set_determinism
from dlbench.execution import resolve_device
from dlbench.planning import Work, stack_id
from dlbench.study import expand
from dlbench.train import run_trial
from dlbench.train_stack import run_stack
from record import Summary, add_record_option  # benchmarks/record.py


class NoHooks:
    def __getattr__(self, name):
        return lambda **kwargs: None


def trials_for(n: int, epochs: int, registry):
    raw = {"study": {"name": "bench", "seeds": n},
           "baseline": {"architecture": {"name": "mlp", "depth": 2, "width": 128},
                        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                        "epochs": epochs, "batch_size": 128},
           "studies": {"s": {"levels": {"only": {}}}}}
    return expand(parse_study_file(raw, Path("bench.toml")), registry)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(trials, data, device) -> None:
    """What a researcher writes by hand: the same model and data, evaluated every epoch."""
    n_in, width = data.x_train.shape[1], 128
    for trial in trials:
        torch.manual_seed(trial.seed)
        model = nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                              nn.Linear(width, data.num_classes)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(trial.config["epochs"]):
            model.train()
            for idx in torch.randperm(len(data.y_train), device=device).split(128):
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                [(model(x).argmax(1) == y).float().mean().item() for x, y in data.splits().values()]


def one_at_a_time(trials, registry, data, device) -> None:
    for trial in trials:
        run_trial(trial, registry, data, device, NoHooks())


def stacked(trials, registry, data, device, cuda_graphs="off") -> None:
    run_stack(Work(tuple(trials), stack_id(trials)), registry, data, device, NoHooks(), lambda t, r: None,
              cuda_graphs=cuda_graphs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[8, 50])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alone", type=int, default=None, help="one-at-a-time ways: time the first K trials only")
    ap.add_argument("--device", default="auto")
    add_record_option(ap)
    args = ap.parse_args()
    summary = Summary(f"stacking ({args.device})", args)
    device = resolve_device(args.device)
    set_determinism(True, device)
    plugins = load_plugins(None, autoload=False)
    component = plugins.registry.get("dataset", "mnist1d")
    data = DataCache(None).get(component, {}, 0.1, device)
    summary.line(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
                 f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs, "
                 f"median of {args.repeats} (min-max)")
    stacked(trials_for(2, 1, plugins.registry), plugins.registry, data, device)  # warm-up: kernels, allocator
    if device.type == "cuda":
        stacked(trials_for(2, 1, plugins.registry), plugins.registry, data, device, "on")
    for n in args.members:
        trials = trials_for(n, args.epochs, plugins.registry)
        alone = trials[:args.alone] if args.alone else trials
        ways = {"bare loop, one at a time": lambda: bare(alone, data, device),
                "dlbench, one at a time": lambda: one_at_a_time(alone, plugins.registry, data, device),
                f"dlbench, stack of {n}": lambda: stacked(trials, plugins.registry, data, device)}
        if device.type == "cuda":  # the same stack, its steps replayed from CUDA graphs
            ways[f"dlbench, stack of {n}, graphs"] = lambda: stacked(trials, plugins.registry, data, device, "on")
        count = {name: len(trials if name.startswith("dlbench, stack") else alone) for name in ways}
        times: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(args.repeats):
            for name, fn in ways.items():  # interleaved: a slow moment of the machine hits all three
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[name].append((time.perf_counter() - start) / count[name])
        med = {k: statistics.median(v) for k, v in times.items()}
        summary.line(f"\nN = {n} trials" + (f" (one at a time: the first {len(alone)})" if len(alone) < n else ""))
        for name, values in times.items():
            summary.line(f"  {name:<28} {med[name] * 1000:8.1f} ms/trial  ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})")
        for way in [w for w in ways if w.startswith("dlbench, stack")]:
            summary.line(f"  {way[9:]} vs bare loop: {med['bare loop, one at a time'] / med[way]:.2f}x faster; "
                         f"vs dlbench one at a time: {med['dlbench, one at a time'] / med[way]:.2f}x faster")
    summary.done()


if __name__ == "__main__":
    main()
