"""The documentation site builds offline with MkDocs in strict mode (a broken link or anchor, a
page left out of the navigation, an API entry that does not resolve: each fails the build), and
the user's pages send nobody to read a source file."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO, describe_result

pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]'), part of the test extra")

USER_PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "design.md")]


def test_the_site_builds_in_strict_mode(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, describe_result(proc)
    assert "WARNING" not in proc.stderr, proc.stderr
    site = tmp_path / "site"
    for page in ("studies", "claims", "results", "plugins", "api", "benchmarks"):
        assert (site / page / "index.html").is_file(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("Range", "Slot", "StackedOptimizer", "Regularizer", "Preprocessor", "TrialInfo"):
        assert 'id="dlbench.' in api and name in api, name  # the docstrings were rendered


def test_every_page_of_the_docs_is_in_the_navigation():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages == set(re.findall(r":\s+(\w[\w-]*\.md)\s*$", nav, re.M)), "add the page to mkdocs.yml's nav"


def test_the_user_pages_send_nobody_to_a_source_file():
    found = []
    for page in USER_PAGES:
        text = page.read_text(encoding="utf-8")
        found += [f"{page.name}: {m}" for m in re.findall(r"\]\(([^)]*\.py[^)]*|[./]*dlbench/[^)]*)\)", text)]
        found += [f"{page.name}: {m}" for m in re.findall(r"see `?`?dlbench/[\w/]+\.py", text)]
    assert found == []
