"""What logging to an MLflow tracking server costs against a SQLite file: the per-trial cost of
the network store.

Runs a small study (6 configs x 2 seeds = 12 trials of a width-16 MLP on 600 MNIST-1D examples,
2 epochs each, as in the test suite; ``--seeds`` for more trials) with ``dlbench run --jobs 1``
as a fresh process, once against a fresh SQLite file and once against a real ``mlflow server``
on 127.0.0.1 (its own SQLite backend, started once, a fresh experiment each time), interleaved
over repetitions. Everything a user waits for is counted: imports, the store, training, the
reports.

    python benchmarks/tracking_store.py [--repeats 3] [--epochs 2] [--seeds 2]

Prints the median wall time of each, the ratio server / SQLite and the difference per trial.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from record import Summary, add_record_option  # benchmarks/record.py

STUDY = """\
[study]
name = "{name}"
seeds = {seeds}

[baseline]
dataset = {{ name = "mnist1d", num_samples = 600 }}
architecture = {{ name = "mlp", width = 16, depth = 1 }}
optimizer = {{ name = "adam", lr = 0.01 }}
epochs = {epochs}
batch_size = 64

[studies.dropout.levels]
off = {{}}
on = {{ regularizers = [{{ name = "dropout", p_input = 0.1, p_hidden = 0.2 }}] }}

[studies.act_depth.factors.activation]
relu = {{ activation = "relu" }}
tanh = {{ activation = "tanh" }}

[studies.act_depth.factors.depth]
1 = {{ architecture = {{ depth = 1 }} }}
2 = {{ architecture = {{ depth = 2 }} }}
"""
CONFIGS = 6


def env() -> dict[str, str]:
    out = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def start_server(folder: Path, store: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with open(folder / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                                 "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"], cwd=folder, env=env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit(f"mlflow server did not start:\n{(folder / 'server.log').read_text()}")


def run_once(folder: Path, name: str, epochs: int, seeds: int, uri: str) -> float:
    """Wall seconds of one `dlbench run` of the study, named ``name`` (its own experiment)."""
    work = folder / name
    work.mkdir()
    study = work / "study.toml"
    study.write_text(STUDY.format(name=name, epochs=epochs, seeds=seeds))
    cmd = [sys.executable, "-m", "dlbench.cli", "run", str(study), "--tracking-uri", uri, "--device", "cpu",
           "--jobs", "1", "--reports-dir", str(work / "reports"), "--checkpoint-dir", str(work / "ckpt")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    add_record_option(ap)
    args = ap.parse_args()
    summary = Summary("tracking_store", args)
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        template = folder / "template.db"  # the schema made once: no run pays for MLflow's migration
        MlflowClient(f"sqlite:///{template}").search_experiments()
        server_store = folder / "server.db"
        shutil.copyfile(template, server_store)
        server, uri = start_server(folder, server_store)
        times: dict[str, list[float]] = {"sqlite": [], "server": []}
        try:
            for r in range(args.repeats):
                db = folder / f"sqlite-{r}.db"
                shutil.copyfile(template, db)
                times["sqlite"].append(run_once(folder, f"sqlite-{r}", args.epochs, args.seeds, f"sqlite:///{db}"))
                times["server"].append(run_once(folder, f"server-{r}", args.epochs, args.seeds, uri))
                print(f"  repeat {r + 1}: sqlite {times['sqlite'][-1]:5.1f} s   server {times['server'][-1]:5.1f} s",
                      flush=True)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    sqlite, http = statistics.median(times["sqlite"]), statistics.median(times["server"])
    trials = CONFIGS * args.seeds
    summary.line(f"\n`dlbench run` of {trials} trials x {args.epochs} epochs, --jobs 1, {os.cpu_count()} CPUs, "
                 f"median of {args.repeats}:")
    for name, values in times.items():
        summary.line(f"  {name:<7} {statistics.median(values):6.1f} s  ({min(values):.1f}-{max(values):.1f})")
    summary.line(f"  server / sqlite: {http / sqlite:.2f}x;  {1000 * (http - sqlite) / trials:+.0f} ms per trial")
    summary.done()


if __name__ == "__main__":
    main()
