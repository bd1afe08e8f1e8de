"""MLflow names made from user-given names: keys of params and tags, run names, search filters.

A study, factor, level or plugin may be named with any text (``config.name_problem``), but MLflow
keys hold only letters, digits, spaces and ``_ - . / :``, must not read as a path that normalizes to
another (``a/../b``) and hold at most 250 characters; a run name holds at most 250 characters in a
SQL store; and MLflow's filter strings have no escape character. So every key dlbench logs goes
through :func:`key`, every run name through :func:`run_name`, every filter through
:func:`tags_filter`. The exact names stay in tag and param values, which take any text.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata

from dlbench.diagnostics import PREFIX as DIAG_PREFIX  # every diagnostic's metric name starts with it

OLD_DIAG_PREFIX = "diag."  # the same in stores written before
MAX_KEY = 250
MAX_RUN_NAME = 250
VALID_KEY = re.compile(r"^[\w.\- /]+$")  # MLflow's rule, less the colon that a Windows server refuses


def valid_key(text: str) -> bool:
    norm = posixpath.normpath(text)
    return (len(text) <= MAX_KEY and bool(VALID_KEY.match(text)) and norm == text and norm != "."
            and not norm.startswith(("..", "/")))


def key(text: str) -> str:
    """``text`` as an MLflow key: itself when MLflow takes it, else each dot-separated part that
    MLflow refuses replaced by an ASCII slug of it and a hash (``factor.a "b"`` -> ``factor.a-b-<hash>``)."""
    if valid_key(text):
        return text
    safe = ".".join(part if valid_key(part) else _slug(part) for part in text.split("."))
    return safe if valid_key(safe) else _slug(text)


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_text).strip("-")[:60]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def run_name(name: str) -> str:
    """A run name MLflow stores whole: at most 250 characters (the full name stays in the tags)."""
    if len(name) <= MAX_RUN_NAME:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{name[:MAX_RUN_NAME - 10]}…-{digest}"


def tags_filter(tags: dict[str, str]) -> str:
    """A filter string selecting the runs whose tags have these values. A value is quoted with
    the quote it does not hold; one holding both kinds is matched with LIKE, each ``'`` as the
    one-character wildcard ``_``: a superset, so the caller keeps only the runs for which
    :func:`has_tags` is true."""
    clauses = []
    for name, value in tags.items():
        if "'" not in value:
            clauses.append(f"tags.`{name}` = '{value}'")
        elif '"' not in value:
            clauses.append(f'tags.`{name}` = "{value}"')
        else:
            clauses.append(f"tags.`{name}` LIKE '{value.replace(chr(39), '_')}'")
    return " and ".join(clauses)


def has_tags(run_tags: dict[str, str], tags: dict[str, str]) -> bool:
    return all(run_tags.get(name) == value for name, value in tags.items())


def metric_name(key: str) -> str:
    """A metric's name as dlbench logs it now: an older store's ``diag.grad_norm.layer0`` ->
    ``diag per step/grad_norm.layer0``; any other name unchanged."""
    return DIAG_PREFIX + key.removeprefix(OLD_DIAG_PREFIX) if key.startswith(OLD_DIAG_PREFIX) else key
