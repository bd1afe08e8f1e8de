"""Refresh the screenshots in docs/ the way a user sees them: a real browser (headless Chromium)
on `dlbench ui` and on the reports' index.html, at 100% zoom.

    python tools/screenshots.py STORE_FOLDER [--out docs] [--reports FOLDER]

STORE_FOLDER is where `dlbench run ablation.toml` ran (its mlflow.db, mlruns/ and reports/). Needs
Chromium (Debian: `apt-get install chromium`) and Playwright's Python package (`pip install
playwright`; its own browsers are not needed). Writes, under --out:

    ui-dropout.png           the runs table of a one-factor study (its saved view)
    ui-activation-depth.png  the runs table of a two-factor study (its saved view)
    ui-study-run.png         the study run's page: its description with each level's results
    ui-trial.png             a trial's page: its metrics, params and tags
    report.png               the top of the dropout report (index.html): claims and tables
    report-dropout.png       the dropout report's first figure, its caption under it
    report-activation-depth.png  the activation x depth report's first figure
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

CHROMIUM = "/usr/bin/chromium"
# as the machine's own browser check starts it: no sandbox as root, no calls home on a closed network
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1500, "height": 860}


def start_ui(store: Path) -> tuple[subprocess.Popen, str]:
    """`dlbench ui` on a free port; its address once it prints it (the page answers by then)."""
    proc = subprocess.Popen([sys.executable, "-m", "dlbench.cli", "ui", "--port", "0", "--tracking-uri",
                             f"sqlite:///{store / 'mlflow.db'}"], cwd=store, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found:
            return proc, found.group(0)
    raise SystemExit(f"dlbench ui ended without an address (exit {proc.wait()})")


def trial_runs(store: Path) -> dict[str, tuple[str, str]]:
    """run name -> (experiment id, run id) of the trial runs, and the study run under ``""``."""
    with sqlite3.connect(store / "mlflow.db") as db:
        rows = db.execute("SELECT r.name, r.experiment_id, r.run_uuid, t.value FROM runs r JOIN tags t "
                          "ON t.run_uuid = r.run_uuid AND t.key = 'dlbench.role' ORDER BY r.start_time").fetchall()
    out = {(name if role == "trial" else ""): (str(exp), run) for name, exp, run, role in rows if role in ("trial", "study")}
    return out


def close_assistant(page) -> None:
    """MLflow 3.17 opens its chat assistant beside every page: closed, the table gets the room."""
    button = page.locator("button[aria-label*='lose']").first
    if button.count():
        button.click()
        time.sleep(0.5)


def shoot(page, url: str, path: Path, wait_s: float = 6.0, clip_height: int | None = None,
          expand: str | None = None) -> None:
    page.goto(url)
    time.sleep(wait_s)
    close_assistant(page)
    if expand and page.get_by_text(expand, exact=True).count():  # the study run's whole description
        page.get_by_text(expand, exact=True).first.click()
        time.sleep(0.5)
    page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": VIEWPORT["width"],
                                          "height": clip_height or VIEWPORT["height"]})
    print(f"{path}  <- {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--reports", type=Path, default=None, help="the reports' folder (default: STORE/reports)")
    args = parser.parse_args()
    store, out = args.store.resolve(), args.out
    reports = (args.reports or store / "reports").resolve()
    from playwright.sync_api import sync_playwright

    runs = trial_runs(store)
    exp, parent = runs[""]
    trial = next(run for name, (_, run) in runs.items() if name == "on, seed=0")
    proc, ui = start_ui(store)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            view = f"{ui}/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey="
            shoot(page, view + quote("dlbench.dropout"), out / "ui-dropout.png")
            shoot(page, view + quote("dlbench.activation_depth"), out / "ui-activation-depth.png")
            shoot(page, f"{ui}/#/experiments/{exp}/runs/{parent}?workflowType=machine_learning",
                  out / "ui-study-run.png", expand="Show more")
            shoot(page, f"{ui}/#/experiments/{exp}/runs/{trial}?workflowType=machine_learning", out / "ui-trial.png")
            shoot(page, (reports / "dropout" / "index.html").as_uri(), out / "report.png", 2.0, 1100)
            for study in ("dropout", "activation_depth"):
                page.goto((reports / study / "index.html").as_uri())
                time.sleep(2.0)
                path = out / f"report-{study.replace('_', '-')}.png"
                page.locator("figure").first.screenshot(path=str(path))
                print(f"{path}  <- the first figure of {reports / study / 'index.html'}")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
