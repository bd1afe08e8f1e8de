"""What the parent process spends writing one trial to MLflow, against the fewest MLflow calls
that store the same run.

In `dlbench run` the parent alone writes to the store: every trial's run, params, tags,
artifacts, dataset input, epoch metrics and diagnostics go through it, one trial after another,
while the workers train. When training is fast (a GPU, stacks of many members) that writing sets
the pace of a large study. This benchmark trains one trial of the default MLP of
``benchmarks/studies/lr_sweep_500.toml`` with the diagnostics on, records the events a worker
sends for it (``workers.Forwarder``), and replays them for N trials of that study:

* ``dlbench``: through dlbench's ``Tracker`` as the parent does (the run opened when the trial is
  taken, then the events routed by ``workers.Router``: its start, its epochs and diagnostics as
  they come, its end);
* ``fewest calls``: the same runs (the tags and params of a run dlbench wrote, the same metrics,
  artifacts and dataset input) written by hand with the fewest MLflow calls, after the fact
  (``create_run`` with every tag, one ``log_batch`` of params and metrics, the artifacts, the
  dataset input, ``set_terminated``): a floor for anything that logs them live.

Each gets a fresh SQLite store; the two are interleaved over repetitions.

    python benchmarks/tracking_ingest.py [--trials 100] [--repeats 3]

Prints the milliseconds per trial of each (median, spread), the ratio, and what N trials cost the
parent.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.tracking import MlflowClient

from dlbench.config import parse_study_file
from dlbench.datacache import DataCache
from dlbench.diagnostics import Diagnostics
from dlbench.plugins import load_plugins
from dlbench.planning import Work
from dlbench.study import Plan, expand
from dlbench.tracking import Tracker
from dlbench.train import run_trial
from dlbench.execution.events import Forwarder, Router
from record import Summary, add_record_option  # benchmarks/record.py

STUDY = Path(__file__).parent / "studies" / "lr_sweep_500.toml"


def record(trial, plugins, data, device) -> list[tuple]:
    """The events of ``trial`` trained here, as a worker sends them (``workers.Forwarder``)."""
    events: list[tuple] = []
    plugins.pm.register(Diagnostics(plugins.hook, plugins.registry), name="diagnostics")
    plugins.pm.register(Forwarder(0, SimpleNamespace(put=events.append), acks=None), name="forwarder")
    try:
        result = run_trial(trial, plugins.registry, data, device, plugins.hook)
        plugins.hook.dlbench_trial_end(trial=trial, result=result)  # as the executor ends it
    finally:
        plugins.pm.unregister(name="forwarder")
        plugins.pm.unregister(name="diagnostics")
    return events


def with_dlbench(uri, study_file, trials, events, device) -> None:
    """``events`` replayed for each trial as the parent routes a worker's (``workers.Router``)."""
    tracker = Tracker(uri, "ingest")
    tracker.start_study(study_file, Plan(trials), device)
    router = Router([Work((t,), str(t.index)) for t in trials], [tracker], lambda trial, result: None)
    for trial in trials:
        tracker.open_run(trial)  # as the parent does when it hands the trial to a worker
        for kind, _, _, payload in events:
            router.route(kind, trial.index, payload)
    tracker.flush()


def by_hand(uri, trials, events, template: tuple[dict, dict], artifacts: Path) -> None:
    """The same runs with the fewest calls, written once each trial is over: the tags and params
    of a run dlbench wrote (``template``), the same metrics, artifacts and dataset input."""
    client = MlflowClient(uri)
    experiment = client.create_experiment("ingest", artifact_location=artifacts.as_uri())
    tags, params = template
    model_text, info = next(payload for kind, _, _, payload in events if kind == "start")
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for kind, _, _, (step, values) in _metric_events(events)
               for k, v in values.items()]
    for trial in trials:
        run_id = client.create_run(experiment, tags=tags | {"mlflow.runName": trial.run_name}).info.run_id
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000],
                             params=[Param(k, v) for k, v in params.items()] if i == 0 else [])
        client.log_dict(run_id, trial.config, "config.json")
        client.log_text(run_id, model_text, "model.txt")
        dataset = MetaDataset(LocalArtifactDatasetSource("dlbench://mnist1d"), name="mnist1d",
                              digest=info["dataset_hash"][:32])
        client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                                [InputTag("mlflow.data.context", "training")])])
        client.set_terminated(run_id, "FINISHED")


def _metric_events(events: list[tuple]) -> list[tuple]:
    """The epoch and diagnostics events: payload (epoch or step, {name: value})."""
    return [e for e in events if e[0] in ("epoch", "diag")]


def written_by_dlbench(uri: str) -> tuple[dict, dict]:
    """The tags and params of one trial's run as dlbench wrote them (its parent's id left out)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ingest").experiment_id
    run = client.search_runs([experiment], "tags.`dlbench.role` = 'trial'", max_results=1)[0]
    return {k: v for k, v in run.data.tags.items() if k != "mlflow.parentRunId"}, run.data.params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    add_record_option(ap)
    args = ap.parse_args()
    summary = Summary("tracking_ingest", args)

    text = STUDY.read_text()
    study_file = parse_study_file(tomllib.loads(text), STUDY, text)
    plugins = load_plugins(None, autoload=False)
    trials = expand(study_file, plugins.registry)[:args.trials]
    device = torch.device("cpu")
    data = DataCache().get(plugins.registry.get("dataset", "mnist1d"), {}, trials[0].config["val_fraction"], device)
    events = record(trials[0], plugins, data, device)
    values = sum(len(payload[1]) for _, _, _, payload in _metric_events(events))

    template = {}  # the tags and params dlbench wrote, for the runs written by hand (dlbench goes first)
    ways = {"dlbench": lambda tmp, uri: with_dlbench(uri, study_file, trials, events, device),
            "fewest calls": lambda tmp, uri: by_hand(uri, trials, events, template["run"], Path(tmp) / "artifacts")}
    times = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            with tempfile.TemporaryDirectory() as tmp:
                uri = f"sqlite:///{tmp}/mlflow.db"
                MlflowClient(uri).search_experiments()  # the store's tables: made before the clock starts
                t0 = time.perf_counter()
                way(tmp, uri)
                times[name].append((time.perf_counter() - t0) / len(trials) * 1000)
                template.setdefault("run", written_by_dlbench(uri))

    floor = statistics.median(times["fewest calls"])
    summary.line(f"{len(trials)} trials of {STUDY.name}, {values} metric values each "
                 f"({sum(e[0] == 'diag' for e in events)} diagnostics steps), fresh SQLite store, "
                 f"median of {args.repeats}")
    for name, ms in times.items():
        median = statistics.median(ms)
        summary.line(f"{name:13s} {median:6.1f} ms per trial ({min(ms):.1f}-{max(ms):.1f})  {median / floor:.2f}x  "
                     f"-> 500 trials: {median * 500 / 1000:.0f} s of the parent")
    summary.done()


if __name__ == "__main__":
    main()
