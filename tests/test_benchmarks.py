"""The benchmarks still run: each at its smallest size, as a real process (a benchmark that broke
when an interface changed went unnoticed until a GPU session tried it). Figures are not checked:
speed is measured in benchmarks/, never asserted in tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: real dlbench processes and stores (pytest -m 'not slow' leaves it out)

REPO = Path(__file__).resolve().parent.parent


def bench(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("args, expect", [
    (["benchmarks/overhead.py", "--epochs", "1", "--repeats", "1", "--device", "cpu"], "dlbench + MLflow SQLite"),
    (["benchmarks/stacking.py", "--members", "2", "--epochs", "1", "--repeats", "1", "--alone", "1",
      "--device", "cpu"], "stack of 2 vs bare loop"),
    (["benchmarks/diagnostics.py", "--epochs", "1", "--repeats", "1"], "hook, no implementation"),
    (["benchmarks/tracking_ingest.py", "--trials", "2", "--repeats", "1"], "fewest calls"),
], ids=["overhead", "stacking", "diagnostics", "tracking_ingest"])
def test_a_benchmark_runs_and_prints_its_ratios(args, expect):
    assert expect in bench(*args)


@pytest.mark.parametrize("script", ["study.py", "grid.py", "tracking_store.py"])
def test_the_whole_process_benchmarks_start(script):  # each runs minutes of `dlbench run`: their options parse
    assert "usage:" in bench(f"benchmarks/{script}", "--help")


def test_the_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0
