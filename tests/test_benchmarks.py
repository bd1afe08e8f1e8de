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
    (["benchmarks/edit_loop.py", "--repeats", "1", "--study", "benchmarks/studies/tiny.toml"], "x the floor"),
], ids=["overhead", "stacking", "diagnostics", "tracking_ingest", "edit_loop"])
def test_a_benchmark_runs_and_prints_its_ratios(args, expect):
    assert expect in bench(*args)


@pytest.mark.parametrize("script", ["study.py", "grid.py", "tracking_store.py", "eta_accuracy.py"])
def test_the_whole_process_benchmarks_start(script):  # each runs minutes of `dlbench run`: their options parse
    assert "usage:" in bench(f"benchmarks/{script}", "--help")


def test_the_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0


def test_a_recorded_benchmark_writes_its_row_and_replaces_it_when_run_again(tmp_path, monkeypatch):
    """`--record`: the benchmarks page's rows are written by the scripts (benchmarks/record.py),
    with the date, the machine, the commit and the command; one row per benchmark."""
    import datetime as dt

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import record

    page = tmp_path / "benchmarks.md"
    page.write_text(f"# B\n\n{record.BEGIN}\n{record.HEADER}\n{record.END}\n\nearlier rows stay\n", encoding="utf-8")
    record.write_row("grid", "bare 24.9 s<br>dlbench 24.2 s: 0.97x", "python benchmarks/grid.py --repeats 3", page,
                     dt.date(2026, 12, 6))
    record.write_row("overhead (cpu)", "1.04x", "python benchmarks/overhead.py", page, dt.date(2026, 12, 6))
    record.write_row("grid", "bare 25.0 s<br>dlbench 24.0 s: 0.96x", "python benchmarks/grid.py --repeats 5", page,
                     dt.date(2026, 12, 7))
    text = page.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| grid") or line.startswith("| overhead")]
    assert len(rows) == 2 and "0.96x" in rows[0] and "2026-12-07" in rows[0] and "--repeats 5" in rows[0]
    assert record.machine().split(",")[0] in rows[0] and "cores" in rows[0]
    assert text.endswith("earlier rows stay\n")


def test_every_benchmark_script_can_record_its_summary():
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        if script.name != "record.py":
            assert "--record" in bench(f"benchmarks/{script.name}", "--help"), script.name
