"""`dlbench ui` against `mlflow ui` and `mlflow ui --workers 1` on one store: start, processes, memory.

MLflow's own UI with its defaults (a uvicorn parent with 4 workers, and the job runner with its
huey consumers for the GenAI features) and with one worker, whole processes, interleaved.

For each start: the seconds until the page (``GET /``) answers, when the address was announced
(dlbench's URL line; MLflow's "Uvicorn running on ..."), and, sampled until ``--settle`` seconds
after the page answered (MLflow's job runner starts its consumers some seconds later), the most
processes in its tree and the most resident memory they held together (the sum of their RSS).
Then Ctrl-C (SIGINT to the process group, as a terminal sends it) and what is still alive 10 s
later. The store: ``--store PATH`` (a SQLite file; read, not written, unless it was moved and
`dlbench ui` relocates it), else a fresh one written by `dlbench run benchmarks/studies/tiny.toml`.

    python benchmarks/ui_start.py [--store PATH/mlflow.db] [--repeats 3] [--settle 10] [--record]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from record import Summary, add_record_option  # benchmarks/record.py

REPO = Path(__file__).resolve().parent.parent
START_LIMIT_S = 300
ANNOUNCED = {"dlbench": r"http://127\.0\.0\.1:{port}\b", "mlflow": r"Uvicorn running on http://127\.0\.0\.1:{port}"}


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def session_processes(sid: int) -> dict[int, int]:
    """pid -> resident memory (bytes) of every process of session ``sid`` (the tree a command
    started in a session of its own, orphans included)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:  # state, ppid, pgrp, session
                continue
            status = (entry / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        rss = re.search(r"VmRSS:\s+(\d+) kB", status)
        out[int(entry.name)] = int(rss.group(1)) * 1024 if rss else 0
    return out


def start_once(cmd: list[str], store_dir: Path, kind: str, settle_s: float) -> dict[str, float]:
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    announced_at: list[float] = []
    pattern = re.compile(ANNOUNCED[kind].format(port=port))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=store_dir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    output: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            if not announced_at and pattern.search(line):
                announced_at.append(time.perf_counter() - t0)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    most, memory, answered = 0, 0, None
    try:
        while True:
            now = time.perf_counter() - t0
            tree = session_processes(proc.pid)
            most, memory = max(most, len(tree)), max(memory, sum(tree.values()))
            if answered is None and answers(f"http://127.0.0.1:{port}/"):
                answered = time.perf_counter() - t0
            if answered is not None and now > answered + settle_s:
                break
            if proc.poll() is not None or now > START_LIMIT_S:
                raise SystemExit(f"{' '.join(cmd)}: {'exited' if proc.poll() is not None else 'no page after'} "
                                 f"({proc.returncode}):\n{''.join(output)[-3000:]}")
            time.sleep(0.1)
        stop0 = time.perf_counter()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        stopped = time.perf_counter() - stop0
        time.sleep(max(0.0, 10 - stopped))
        left = len(session_processes(proc.pid))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of it, before the next start
        except ProcessLookupError:
            pass
        for pid in session_processes(proc.pid):  # orphans in another group of the session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    announced = announced_at[0] if announced_at else float("nan")
    return {"answer": answered, "announced": announced, "processes": most, "rss": memory / 2**30,
            "stop": stopped, "exit": code if code is not None else -1, "left": left}


def make_store(folder: Path) -> Path:
    db = folder / "mlflow.db"
    cmd = [sys.executable, "-m", "dlbench.cli", "run", "benchmarks/studies/tiny.toml", "--tracking-uri",
           f"sqlite:///{db}", "--reports-dir", str(folder / "reports"), "--checkpoint-dir", str(folder / "ckpt"),
           "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=None, help="a SQLite store (default: a fresh tiny study's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds after the page answered during which the process tree is still sampled")
    add_record_option(ap)
    args = ap.parse_args()
    summary = Summary("ui_start", args)
    with tempfile.TemporaryDirectory(prefix="dlbench-ui-bench-") as tmp:
        db = args.store.resolve() if args.store else make_store(Path(tmp))
        uri = f"sqlite:///{db}"
        mlflow = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                  "--port", "{port}"]
        ways = {
            "mlflow ui": ("mlflow", mlflow),
            "mlflow ui --workers 1": ("mlflow", [*mlflow, "--workers", "1"]),
            "dlbench ui": ("dlbench", [sys.executable, "-m", "dlbench.cli", "ui", "--tracking-uri", uri,
                                       "--port", "{port}"]),
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
        for kind, cmd in ways.values():  # a warm-up of each: the page cache, the bytecode
            start_once(cmd, db.parent, kind, 0.0)
        for _ in range(args.repeats):
            for name, (kind, cmd) in ways.items():
                results[name].append(start_once(cmd, db.parent, kind, args.settle))
                print(f"  {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    base = statistics.median(r["answer"] for r in results["mlflow ui"])
    where = f"--store {args.store}" if args.store else "a fresh store of benchmarks/studies/tiny.toml"
    summary.line(f"{where}, whole processes, median of {args.repeats}, interleaved; page = GET / answers 200:")
    for name, runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        early = med["answer"] - med["announced"]
        said = (f"announced {early:.1f} s before it answered" if early > 0.05
                else "announced once it answered")
        processes, left = (f"{n:.0f} process{'es' if n != 1 else ''}" for n in (med["processes"], med["left"]))
        summary.line(f"  {name:<22} page in {med['answer']:5.1f} s ({min(r['answer'] for r in runs):.1f}-"
                     f"{max(r['answer'] for r in runs):.1f})  {med['answer'] / base:.2f}x mlflow ui;  {processes}, "
                     f"{med['rss']:.2f} GiB RSS;  {said};  Ctrl-C: exit {med['exit']:.0f}, "
                     f"{left} left")
    summary.done()


if __name__ == "__main__":
    main()
