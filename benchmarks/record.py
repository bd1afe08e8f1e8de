"""The benchmarks page's latest figures, written by the benchmarks themselves.

Every script of ``benchmarks/`` prints its summary through a :class:`Summary`; with ``--record``
it also writes that summary as its row of the "Latest figures" table of ``docs/benchmarks.md``,
with the date, the machine, the commit and the command that produced it (a row per benchmark
and study, replaced by the next recorded run). Nobody edits those rows by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- latest figures: begin (written by benchmarks/record.py) -->", "<!-- latest figures: end -->"
HEADER = "| benchmark | result | date | machine | commit | command |\n|---|---|---|---|---|---|"


def add_record_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", action="store_true",
                        help="also write the summary as this benchmark's row of docs/benchmarks.md")


def machine() -> str:
    """The CPU (model, cores), the memory and the GPU when torch sees one."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    gpu = ""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            gpu = f", {torch.cuda.get_device_name(0)}"
    return f"{model}, {cores} cores{memory}{gpu}, Python {platform.python_version()}"


def commit() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    # the page this writes into does not count as a change of the code measured
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/benchmarks.md")
    return head + ("+changes" if changed else "")


class Summary:
    """The summary lines of one benchmark run: printed as they come, recorded with ``--record``."""

    def __init__(self, benchmark: str, args: argparse.Namespace):
        self.benchmark, self.record = benchmark, getattr(args, "record", False)
        argv = [a for a in sys.argv[1:] if a != "--record"]
        self.command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *argv])
        self.lines: list[str] = []

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if text.strip():
            self.lines.append(text.strip())

    def done(self) -> None:
        if self.record:
            write_row(self.benchmark, "<br>".join(cell(line) for line in self.lines), self.command)
            print(f"recorded in {PAGE.relative_to(REPO)}")


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def write_row(benchmark: str, result: str, command: str, page: Path = PAGE, today: dt.date | None = None) -> None:
    """Put ``benchmark``'s row (replacing its last one) in the page's latest-figures table."""
    text = page.read_text(encoding="utf-8")
    if BEGIN not in text:
        raise SystemExit(f"{page}: no latest-figures table ({BEGIN}) to write into")
    head, rest = text.split(BEGIN, 1)
    table, tail = rest.split(END, 1)
    rows = [r for r in table.strip().splitlines()[2:] if r.strip()]
    rows = [r for r in rows if not r.startswith(f"| {cell(benchmark)} |")]
    date = (today or dt.date.today()).isoformat()
    rows.append(f"| {cell(benchmark)} | {result} | {date} | {cell(machine())} | `{commit()}` | `{cell(command)}` |")
    rows.sort()
    page.write_text(f"{head}{BEGIN}\n{HEADER}\n" + "\n".join(rows) + f"\n{END}{tail}", encoding="utf-8")
