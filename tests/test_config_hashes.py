"""The config hash names a trial in every store (skip, resume, reuse, reproduce): a change of the
code must not change it. tests/data/config_hashes.json holds the hash of every trial of every
shipped study file as computed before the package was reshaped (commit 2a2ab9c)."""
import json
from pathlib import Path

import pytest

from dlbench.config import read_study_file
from dlbench.plugins import load_plugins
from dlbench.study import expand_plan

ROOT = Path(__file__).resolve().parent.parent
RECORDED = json.loads((ROOT / "tests" / "data" / "config_hashes.json").read_text())


@pytest.fixture(scope="module")
def registry():
    return load_plugins(None).registry


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_config_hashes_of_shipped_studies_are_unchanged(name, registry):
    plan = expand_plan(read_study_file(ROOT / name), registry)
    # the level as the trial's identity spells it (``dlbench.trial``, unchanged since): the recorded one
    now = [[t.study, t.key.removeprefix(f"{t.study}/").rsplit("/", 1)[0], t.seed, t.config_hash] for t in plan.trials]
    assert now == RECORDED[name]
    assert all(t.key == f"{t.study}/{level}/seed={seed}" for t, (_, level, seed, _) in zip(plan.trials, RECORDED[name]))


def test_every_shipped_study_file_is_covered():
    shipped = {"ablation.toml", *(f"ablations/{p.name}" for p in (ROOT / "ablations").glob("*.toml"))}
    assert shipped == set(RECORDED)
    assert sum(len(v) for v in RECORDED.values()) > 200
