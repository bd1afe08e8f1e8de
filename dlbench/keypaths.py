"""Key paths of a study file (``studies.dropout.levels.on``): how a key is written in one, and the
problem an unknown key makes. A leaf module: the study file reader (``config.py``) and the
tuning spaces (``tuning/space.py``) both use it."""

from __future__ import annotations

import json
import re

from dlbench.errors import choose_one_of

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")  # a TOML bare key: written without quotes


def toml_key(name: str) -> str:
    """``name`` as a key in a TOML key path: bare when it can be, else quoted."""
    return name if BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)


def unknown_keys(table: dict, allowed: list[str], prefix: str, problems: list[str]) -> None:
    """Add a problem, with the closest allowed key, for each key of ``table`` not in ``allowed``."""
    for key in table:
        if key not in allowed:
            problems.append(f"{prefix}{key}: unknown key; {choose_one_of(key, allowed)}")
