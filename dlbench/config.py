"""Study files: TOML -> validated, typed models. Every error names the file and the key path.

A study file has three parts::

    [study]                      # name, description, seeds (a count or a list)
    [baseline]                   # the training setup every trial starts from
    [studies.<name>]             # one ablation: question, levels (or factors), overrides

A level (or a study's own ``baseline`` table) overrides the file's baseline: tables merge key by
key, everything else is replaced. A component table naming a different plugin replaces the
baseline's table instead of merging (options of ``sgd`` do not carry over to ``adam``).
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from dlbench.errors import ConfigError, choose_one_of, did_you_mean
from dlbench.keypaths import toml_key, unknown_keys  # noqa: F401  (toml_key: part of this module's API)
from dlbench.schema import MISSING, Range, check, coerce, describe
from dlbench.schema import show as _show
from dlbench.textfile import read_text
from dlbench.trial import level_label  # noqa: F401  (part of this module's API)
from dlbench.tuning.space import merge_tune, parse_tune

# Component settings: the key in a study file -> the plugin kind it names.
COMPONENTS = {
    "dataset": "dataset",
    "architecture": "architecture",
    "activation": "activation",
    "initializer": "initializer",
    "optimizer": "optimizer",
    "schedule": "schedule",
}
# The loss, a component setting added later: left out of the resolved config when it resolves to
# plain cross-entropy (this, every option at its default), so the configs before it keep their hash.
DEFAULT_LOSS = {"name": "cross_entropy"}


# The core settings, typed as plugin options are (dlbench.schema).
SCALARS = {
    "epochs": Annotated[int, Range(ge=1)],
    "batch_size": Annotated[int, Range(ge=1)],
    "val_fraction": Annotated[float, Range(ge=0, lt=1)],
    "diagnostics_every": Annotated[int, Range(ge=0)],
    "warmup_fraction": Annotated[float, Range(ge=0, lt=1)],
}
# Core settings added later, left out of the resolved config at their default, so the configs
# written before them keep their hash (resume, ``dlbench reproduce``).
OMITTED_AT_DEFAULT = {"warmup_fraction": 0.0}

# What a study file may leave out. The embedded dataset and a plain MLP make the smallest study
# file one study of one level: [studies.s.levels] followed by a = {}.
DEFAULT_BASELINE: dict[str, Any] = {
    "dataset": "mnist1d",
    "architecture": "mlp",
    "activation": "relu",
    "initializer": "default",
    "optimizer": "sgd",
    "schedule": "constant",
    # the training objective, per example (dlbench/builtin/losses.py); left out of the resolved
    # config at its default (plain cross-entropy), so configs without it keep their hash
    "loss": "cross_entropy",
    "regularizers": [],
    # steps fitted on the training split, applied to every split (dlbench/preprocessing.py); left
    # out of the resolved config when empty, so configs without it keep their hash
    "preprocessing": [],
    "epochs": 20,
    "batch_size": 64,
    "val_fraction": 0.1,
    # training diagnostics (gradient/weight norms, activation statistics per layer) every N
    # optimizer steps, and at step 1; 0 turns them off. 50 costs about 2% (benchmarks/diagnostics.py)
    "diagnostics_every": 50,
    # linear warm-up over this fraction of the optimizer steps, multiplying any schedule's rate
    # (Goyal et al. 2017; dlbench/warmup.py); 0: none
    "warmup_fraction": 0.0,
}
BASELINE_KEYS = list(DEFAULT_BASELINE)
TOP_KEYS = ["study", "baseline", "studies"]
STUDY_META_KEYS = ["name", "description", "seeds", "alpha", "margin"]
STUDY_KEYS = ["question", "description", "seeds", "reference", "baseline", "levels", "factors", "claims", "alpha",
              "margin", "tune"]
LEVEL_KEYS = [*BASELINE_KEYS, "tune"]  # a level may add to (or set) its study's search space
CLAIM_KEYS = ["level", "beats", "metric"]
INTERACTION_CLAIM_KEYS = ["interaction", "metric"]  # docs/claims.md
INTERACTION_KEYS = ["factor", "level", "beats", "across"]
# What a claim may compare, and which way is better: final-epoch metrics of each trial.
CLAIM_METRICS = {f"{split}_{m}": m == "accuracy" for split in ("test", "val", "train") for m in ("accuracy", "loss")}
CLAIM_METRICS["generalization_gap"] = False  # train minus test accuracy: lower is better
DEFAULT_ALPHA = 0.05
# `dlbench compare`: two runs' results of a level within this of each other are the same result (an
# equivalence test; docs/reproducibility.md). 0.02 of an accuracy: 2 points, 20 of 1000 test examples
DEFAULT_MARGIN = 0.02
MAX_SEEDS = 10_000  # a count beyond is a typo, not a study
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
RESERVED_FACTOR_NAMES = {"study", "level", "seed", "status", "epochs_run", "config_hash"}  # report columns
# Study, factor and level names: any text of 1 to MAX_NAME characters without control characters
# or line breaks, and no space at either end. They reach file names only through
# dlbench.paths.folder_name and MLflow keys only through dlbench.tracking.keys.
MAX_NAME = 200


@dataclass(frozen=True)
class Factor:
    """One thing a study varies, with its named levels (each a table of overrides)."""

    name: str
    levels: dict[str, dict]
    tunes: dict[str, dict] = field(default_factory=dict)  # level -> its own tune table (dlbench/tuning/space.py)

    @property
    def level_names(self) -> list[str]:
        return list(self.levels)


@dataclass(frozen=True)
class Claim:
    """A study's hypothesis "``level`` beats ``beats`` on ``metric``", tested over seeds in the report."""

    level: dict[str, str]  # factor -> level name: one cell of the study
    beats: dict[str, str]
    metric: str = "test_accuracy"

    @property
    def higher_is_better(self) -> bool:
        return CLAIM_METRICS[self.metric]

    def __str__(self) -> str:
        return f"{level_label(self.level)} beats {level_label(self.beats)} on {self.metric}"


@dataclass(frozen=True)
class InteractionClaim:
    """A two-factor study's hypothesis "the effect of ``level`` over ``beats`` (two levels of ``factor``)
    on ``metric`` is larger at one level of ``across`` than at another": a difference of differences,
    (mean(level_at) - mean(beats_at)) - (mean(level_than) - mean(beats_than)), tested over seeds."""

    factor: str  # the factor whose effect is compared
    across: str  # the other factor: the effect is compared at two of its levels
    level_at: dict[str, str]  # the four cells, factor -> level name, in the study's factor order
    beats_at: dict[str, str]
    level_than: dict[str, str]
    beats_than: dict[str, str]
    metric: str = "test_accuracy"

    @property
    def higher_is_better(self) -> bool:
        return CLAIM_METRICS[self.metric]

    @property
    def level(self) -> str:
        return self.level_at[self.factor]

    @property
    def beats(self) -> str:
        return self.beats_at[self.factor]

    @property
    def at(self) -> str:
        return self.level_at[self.across]

    @property
    def than(self) -> str:
        return self.level_than[self.across]

    def __str__(self) -> str:
        return (f"{self.factor}={self.level} beats {self.factor}={self.beats} on {self.metric} by more at "
                f"{self.across}={self.at} than at {self.across}={self.than}")


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    factors: tuple[Factor, ...]
    seeds: tuple[int, ...]
    reference: dict[str, str]  # factor -> its reference level (the first level unless set)
    overrides: dict = field(default_factory=dict)
    claims: tuple[Claim | InteractionClaim, ...] = ()
    alpha: float = DEFAULT_ALPHA  # significance level of the claims' verdicts
    tune: dict | None = None  # the study's tune table, checked (dlbench/tuning/space.py)
    margin: float = DEFAULT_MARGIN  # `dlbench compare`'s equivalence margin for its levels

    @property
    def factor_names(self) -> list[str]:
        return [f.name for f in self.factors]

    @property
    def level_names(self) -> dict[str, list[str]]:
        """Each factor's level names, in study-file order."""
        return {f.name: f.level_names for f in self.factors}

    def label(self, levels: dict[str, str]) -> str:
        """The label of one level of this study (``relu, depth=8``; see ``trial.level_label``)."""
        return level_label(levels, self.level_names)


@dataclass(frozen=True)
class StudyFile:
    path: Path
    name: str
    description: str
    baseline: dict
    studies: tuple[Study, ...]
    text: str


def name_problem(name) -> str | None:
    """Why ``name`` cannot name a study, factor or level, or None when it can."""
    if not isinstance(name, str):
        return f"expected a name (a string), got {_show(name)}"
    if not name.strip():
        return "a name cannot be empty or only spaces"
    if len(name) > MAX_NAME:
        return f"a name holds at most {MAX_NAME} characters; this one has {len(name)}"
    bad = sorted({c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")})
    if bad:
        return f"a name cannot hold control characters or line breaks ({', '.join(map(repr, bad))})"
    if name != name.strip():
        return "a name cannot start or end with a space"
    return None


def read_study_file(path: str | Path) -> StudyFile:
    """Parse and structurally validate a study file (plugin names are checked at expansion)."""
    path = Path(path)
    text = read_text(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"invalid TOML: {exc}. See https://toml.io for the syntax."]) from None
    except RecursionError:
        raise ConfigError(str(path), ["invalid TOML: arrays or inline tables nested too deeply to parse; "
                                      "a study file nests a few levels at most"]) from None
    except ValueError:  # an integer literal beyond Python's 4300 digits
        raise ConfigError(str(path), ["invalid TOML: an integer of thousands of digits; TOML integers are 64-bit "
                                      "(-2^63 to 2^63 - 1)"]) from None
    return parse_study_file(raw, path, text)


def parse_study_file(raw: dict, path: Path, text: str = "") -> StudyFile:
    problems: list[str] = []
    _huge_integers(raw, "", problems)
    unknown_keys(raw, TOP_KEYS, "", problems)

    meta = _table(raw, "study", "study", problems)
    unknown_keys(meta, STUDY_META_KEYS, "study.", problems)
    name = meta.get("name", path.stem)
    problem = name_problem(name)
    if problem:
        problems.append(f"study.name: {problem} (any text of 1 to {MAX_NAME} characters)")
        name = path.stem
    description = meta.get("description", "")
    default_seeds = _seeds(meta.get("seeds", 3), "study.seeds", problems)
    default_alpha = _alpha(meta.get("alpha", DEFAULT_ALPHA), "study.alpha", problems)
    default_margin = _margin(meta.get("margin", DEFAULT_MARGIN), "study.margin", problems)

    baseline = _table(raw, "baseline", "baseline", problems)
    unknown_keys(baseline, BASELINE_KEYS, "baseline.", problems)
    baseline = merge(normalize(DEFAULT_BASELINE), normalize(baseline))

    studies_raw = _table(raw, "studies", "studies", problems)
    if not studies_raw:
        problems.append("studies: no study defined; add at least one table such as "
                        "[studies.dropout] with [studies.dropout.levels] off = {} and on = {...}")
    studies = []
    for sname, sraw in studies_raw.items():
        where = f"studies.{toml_key(sname)}"
        problem = name_problem(sname)
        if problem:
            problems.append(f"{where}: {problem} (a study name is any text of 1 to {MAX_NAME} characters)")
        if not isinstance(sraw, dict):
            problems.append(f"{where}: expected a table, got {_show(sraw)}")
            continue
        study = _parse_study(sname, sraw, default_seeds, problems, default_alpha, default_margin)
        if study is not None:
            studies.append(study)
    if problems:
        raise ConfigError(str(path), problems)
    return StudyFile(path, name, description, baseline, tuple(studies), text)


def _parse_study(name: str, raw: dict, default_seeds: tuple[int, ...], problems: list[str],
                 default_alpha: float = DEFAULT_ALPHA, default_margin: float = DEFAULT_MARGIN) -> Study | None:
    where = f"studies.{toml_key(name)}"
    unknown_keys(raw, STUDY_KEYS, f"{where}.", problems)
    seeds = _seeds(raw["seeds"], f"{where}.seeds", problems) if "seeds" in raw else default_seeds
    overrides = _table(raw, "baseline", f"{where}.baseline", problems)
    unknown_keys(overrides, BASELINE_KEYS, f"{where}.baseline.", problems)

    if ("levels" in raw) == ("factors" in raw):
        problems.append(f"{where}: give exactly one of 'levels' (one factor) or 'factors' (several), "
                        f"e.g. [{where}.levels] with off = {{}} and on = {{ ... }}")
        return None
    if "levels" in raw:
        factors_raw = {name: raw["levels"]}
        level_where = {name: f"{where}.levels"}
    else:
        factors_raw = _table(raw, "factors", f"{where}.factors", problems)
        level_where = {f: f"{where}.factors.{toml_key(f)}" for f in factors_raw}
        if not factors_raw:
            problems.append(f"{where}.factors: empty; add [{where}.factors.<factor>] tables of levels")
    factors = []
    for fname, levels in factors_raw.items():
        fw = level_where[fname]
        problem = name_problem(fname) if "factors" in raw else None  # one factor: the study's name
        if problem:
            problems.append(f"{fw}: {problem}")
        if fname in RESERVED_FACTOR_NAMES:
            problems.append(f"{fw}: {fname!r} cannot name a factor (reserved: {', '.join(sorted(RESERVED_FACTOR_NAMES))})")
        if not isinstance(levels, dict) or not levels:
            problems.append(f"{fw}: expected a table of named levels, each a table of overrides, got {_show(levels)}")
            continue
        for lname, over in levels.items():
            problem = name_problem(lname)
            if problem:
                problems.append(f"{fw}.{toml_key(lname)}: {problem}")
            if not isinstance(over, dict):
                problems.append(f"{fw}.{lname}: a level is a table of overrides (use {{}} for the baseline itself), "
                                f"got {_show(over)}")
            else:
                unknown_keys(over, LEVEL_KEYS, f"{fw}.{lname}.", problems)
        tunes = {k: v["tune"] for k, v in levels.items() if isinstance(v, dict) and "tune" in v}
        overrides_of = {k: normalize({o: x for o, x in v.items() if o != "tune"}) if isinstance(v, dict) else {}
                        for k, v in levels.items()}
        factors.append(Factor(fname, overrides_of, tunes))

    reference = {f.name: f.level_names[0] for f in factors}
    if raw.get("reference") is not None:
        reference.update(parse_level(raw["reference"], factors, f"{where}.reference", problems, every=False) or {})
    question = raw.get("question", raw.get("description", ""))
    alpha = _alpha(raw["alpha"], f"{where}.alpha", problems) if "alpha" in raw else default_alpha
    claims = _claims(raw.get("claims", []), factors, f"{where}.claims", problems)
    tune = _tune(raw.get("tune"), factors, where, level_where, problems)
    margin = _margin(raw["margin"], f"{where}.margin", problems) if "margin" in raw else default_margin
    return Study(name, str(question), tuple(factors), seeds, reference, normalize(overrides), claims, alpha, tune,
                 margin)


def _tune(raw, factors: list[Factor], where: str, level_where: dict[str, str], problems: list[str]) -> dict | None:
    """Check the study's tune table and each level's (merged over the study's); the study's, raw."""
    if raw is not None and parse_tune(raw, f"{where}.tune", problems) is None:
        return None
    for factor in factors:
        for lname, own in factor.tunes.items():
            parse_tune(merge_tune(raw, own) if isinstance(own, dict) else own,
                       f"{level_where[factor.name]}.{toml_key(lname)}.tune", problems)
    return raw


def _claims(raw, factors: list[Factor], where: str, problems: list[str]) -> tuple[Claim | InteractionClaim, ...]:
    """``claims = [{ level = "on", beats = "off", metric = "test_accuracy" }, ...]``; in a study of two
    factors also ``{ interaction = { factor, level, beats, across }, metric }`` (docs/claims.md)."""
    example = 'e.g. claims = [{ level = "on", beats = "off", metric = "test_accuracy" }]'
    if not isinstance(raw, list):
        problems.append(f"{where}: expected an array of claims, {example}; got {_show(raw)}")
        return ()
    claims = []
    for i, item in enumerate(raw):
        path = f"{where}[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{path}: expected a table such as {{ level = \"on\", beats = \"off\" }}, got {_show(item)}")
            continue
        if "interaction" in item:
            claim = _interaction_claim(item, factors, path, problems)
            if claim is not None:
                claims.append(claim)
            continue
        for key in item:
            if key not in CLAIM_KEYS:
                close = did_you_mean(key, CLAIM_KEYS) or not did_you_mean(key, ["interaction"])
                tail = (choose_one_of(key, CLAIM_KEYS) + " (an interaction claim: interaction, metric)" if close
                        else choose_one_of(key, [*CLAIM_KEYS, "interaction"]))
                problems.append(f"{path}.{key}: unknown key; {tail}")
        sides = {}
        for key in ("level", "beats"):
            if key not in item:
                problems.append(f"{path}.{key}: missing; a claim names the level that wins (level) and the one it "
                                f"beats (beats), {example}")
            else:
                sides[key] = parse_level(item[key], factors, f"{path}.{key}", problems)
        metric = _claim_metric(item, path, problems)
        if metric is None:
            continue
        if len(sides) == 2 and None not in sides.values():
            if sides["level"] == sides["beats"]:
                problems.append(f"{path}: a level cannot beat itself ({level_label(sides['level'])!r}); "
                                "name two different levels")
                continue
            claims.append(Claim(sides["level"], sides["beats"], metric))
    return tuple(claims)


def _claim_metric(item: dict, path: str, problems: list[str]) -> str | None:
    metric = item.get("metric", "test_accuracy")
    if metric not in CLAIM_METRICS:
        problems.append(f"{path}.metric: unknown metric {_show(metric)}; {choose_one_of(str(metric), CLAIM_METRICS)}")
        return None
    return metric


def _interaction_claim(item: dict, factors: list[Factor], path: str, problems: list[str]) -> InteractionClaim | None:
    """``{ interaction = { factor = "reg", level = "l2", beats = "none", across = { width = ["1024", "256"] } } }``."""
    example = ('e.g. { interaction = { factor = "reg", level = "l2", beats = "none", '
               'across = { width = ["1024", "256"] } }, metric = "test_accuracy" }')
    unknown_keys(item, INTERACTION_CLAIM_KEYS, f"{path}.", problems)
    metric = _claim_metric(item, path, problems)
    inner, where = item["interaction"], f"{path}.interaction"
    if len(factors) != 2:
        problems.append(f"{where}: an interaction claim compares the effect of one factor at two levels of another; "
                        f"it needs a study of exactly two factors (this one has {len(factors)})")
        return None
    if not isinstance(inner, dict):
        problems.append(f"{where}: expected a table, {example}; got {_show(inner)}")
        return None
    unknown_keys(inner, INTERACTION_KEYS, f"{where}.", problems)
    missing = [k for k in INTERACTION_KEYS if k not in inner]
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}; {example}")
        return None
    names = [f.name for f in factors]
    fname = inner["factor"]
    factor = next((f for f in factors if f.name == fname), None)
    if factor is None:
        problems.append(f"{where}.factor: unknown factor {_show(fname)}; {choose_one_of(str(fname), names)}")
        return None
    other = next(f for f in factors if f.name != fname)
    sides = [parse_level(inner[k], [factor], f"{where}.{k}", problems) for k in ("level", "beats")]
    across = inner["across"]
    if not isinstance(across, dict) or len(across) != 1:
        problems.append(f"{where}.across: expected a table naming the other factor and two of its levels, "
                        f"{{ {toml_key(other.name)} = [\"{other.level_names[-1]}\", \"{other.level_names[0]}\"] }}; "
                        f"got {_show(across)}")
        return None
    ((aname, at),) = across.items()
    if aname != other.name:
        tail = (f"it is the other factor, {other.name!r}" if aname == fname
                else choose_one_of(str(aname), [other.name]))
        problems.append(f"{where}.across.{toml_key(str(aname))}: not the other factor of the study; {tail}")
        return None
    apath = f"{where}.across.{toml_key(other.name)}"
    if not isinstance(at, list) or len(at) != 2:
        problems.append(f"{apath}: expected two levels of {other.name!r}, the one where the effect is claimed larger "
                        f"first, e.g. [\"{other.level_names[-1]}\", \"{other.level_names[0]}\"]; got {_show(at)}")
        return None
    at = [parse_level(v, [other], f"{apath}[{j}]", problems) for j, v in enumerate(at)]
    if None in sides or None in at or metric is None:
        return None
    if sides[0] == sides[1]:
        problems.append(f"{where}: level and beats name the same level ({sides[0][fname]!r}); name two different "
                        f"levels of {fname!r}")
        return None
    if at[0] == at[1]:
        problems.append(f"{apath}: the same level twice ({at[0][other.name]!r}); name two different levels of "
                        f"{other.name!r}")
        return None

    def cell(lvl: dict, where_at: dict) -> dict[str, str]:
        return {n: (lvl | where_at)[n] for n in names}

    return InteractionClaim(fname, other.name, cell(sides[0], at[0]), cell(sides[1], at[0]),
                            cell(sides[0], at[1]), cell(sides[1], at[1]), metric)


def parse_level(value, factors: list[Factor], path: str, problems: list[str],
                every: bool = True) -> dict[str, str] | None:
    """A level as a study file names it (``reference``, a claim's ``level`` and ``beats``, ...).

    Four forms: the level's name (a study of one factor), its label as runs show it (``"none,
    width=256"``), factor=level pairs (``"reg=none,width=256"``, in any order, spaces allowed around
    ``,`` and ``=``), or a table
    ``{ reg = "none", width = 256 }`` (integers read as level names). Returns factor -> level in the
    study's factor order, or None after adding a problem at ``path``. ``every``: every factor must be
    named (a cell of the study); else any of them (``reference``).
    """
    names = [f.name for f in factors]
    if isinstance(value, int) and not isinstance(value, bool) and len(factors) == 1:
        value = str(value)  # depth = 8
    if isinstance(value, str):
        if len(factors) == 1 and value in factors[0].levels:
            value = {names[0]: value}
        else:
            labels = _cells_by_label(factors)
            pairs = list(labels[value].items()) if value in labels else _label_pairs(value)
            if pairs is None:
                if len(factors) == 1:
                    value = {names[0]: value}  # a misspelt name: the problem below says which are known
                else:
                    cells = list(labels)
                    problems.append(f"{path}: {value!r} names no level: in a study of several factors write "
                                    f"its label as runs show it, \"{cells[-1]}\", factor=level pairs, or a table "
                                    f"{{ {_example_table(factors)} }}; {did_you_mean(value, cells)}"
                                    .rstrip("; ").rstrip())
                    return None
            else:
                twice = sorted({k for k, _ in pairs if [k for k, _ in pairs].count(k) > 1})
                if twice:
                    problems.append(f"{path}: {value!r} names factor {twice[0]!r} more than once; name each factor "
                                    "once")
                    return None
                value = dict(pairs)
    if not isinstance(value, dict):
        what = "a table naming a level of every factor" if every else "a level name or a table factor = level"
        problems.append(f"{path}: expected {what}, e.g. {{ {_example_table(factors)} }} "
                        f"(or the run label \"{','.join(f'{f.name}={f.level_names[-1]}' for f in factors)}\"), "
                        f"got {_show(value)}")
        return None
    cell, ok = {}, True
    for fname, lname in value.items():
        factor = next((f for f in factors if f.name == fname), None)
        lname = str(lname) if isinstance(lname, int) and not isinstance(lname, bool) else lname  # depth = 8
        if factor is None:
            problems.append(f"{path}.{toml_key(fname)}: unknown factor; {choose_one_of(fname, names)}")
            ok = False
        elif not isinstance(lname, str) or lname not in factor.levels:
            where = f"{path}" if len(factors) == 1 else f"{path}.{toml_key(fname)}"
            shown = repr(lname) if isinstance(lname, str) else _show(lname)
            problems.append(f"{where}: unknown level {shown} of factor {fname!r}; "
                            f"{choose_one_of(str(lname), factor.level_names)}")
            ok = False
        else:
            cell[fname] = lname
    missing = [n for n in names if n not in value]
    if ok and every and missing:
        problems.append(f"{path}: name a level of every factor of the study (missing: {', '.join(missing)})")
        ok = False
    return {n: cell[n] for n in names if n in cell} if ok else None


def _example_table(factors: list[Factor]) -> str:
    return ", ".join(f'{toml_key(f.name)} = "{f.level_names[-1]}"' for f in factors)


def _cells_by_label(factors: list[Factor]) -> dict[str, dict[str, str]]:
    """Every cell of a study of several factors by its label (``relu, depth=8``); none for one factor."""
    if len(factors) < 2:
        return {}
    names = {f.name: f.level_names for f in factors}
    cells = (dict(zip(names, combo)) for combo in itertools.product(*names.values()))
    return {level_label(cell, names): cell for cell in cells}


def _label_pairs(text: str) -> list[tuple[str, str]] | None:
    """``"a=x, b=y"`` -> {"a": "x", "b": "y"}, or None when ``text`` is no list of factor=level pairs.

    A pair ends at a comma followed by a name and ``=``, so a level name may hold a comma (not an
    ``=``: such a level is named by the table form). Spaces around names are dropped.
    """
    parts = re.split(r",(?=[^,=]*=)", text)
    if not all("=" in part for part in parts):
        return None
    return [tuple(x.strip() for x in part.split("=", 1)) for part in parts]


def _alpha(value, path: str, problems: list[str]) -> float:
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    problems.append(f"{path}: expected a significance level between 0 and 1 such as 0.05, got {_show(value)}")
    return DEFAULT_ALPHA


def _margin(value, path: str, problems: list[str]) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    problems.append(f"{path}: expected a positive number such as 0.02 (two results of a level within it of each "
                    f"other are the same result, for `dlbench compare`), got {_show(value)}")
    return DEFAULT_MARGIN


# -- merging and resolution ---------------------------------------------------------------------


def normalize(config: dict) -> dict:
    """Component shorthands (``optimizer = "adam"``) become tables (``{name = "adam"}``)."""
    out = copy.deepcopy(config)
    for key in [*COMPONENTS, "loss"]:
        if isinstance(out.get(key), str):
            out[key] = {"name": out[key]}
    for key in ("regularizers", "preprocessing"):
        if isinstance(out.get(key), list):
            out[key] = [{"name": r} if isinstance(r, str) else r for r in out[key]]
    return out


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base`` (see the module docstring for the rules)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        renamed = isinstance(value, dict) and "name" in value and isinstance(old, dict) and old.get("name") != value["name"]
        if isinstance(value, dict) and isinstance(old, dict) and not renamed:
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(config: dict, registry, where: dict[str, str]) -> tuple[dict, list[str]]:
    """Check a merged config against the core settings and the plugins' options.

    Returns the fully resolved config (every option explicit, defaults filled in, ints given for
    floats made floats) and the problems found. ``where`` maps a top-level key to the key path
    that last set it, so a problem points at the line the user wrote.
    """
    problems: list[str] = []
    resolved: dict[str, Any] = {}
    for key, annotation in SCALARS.items():
        problem = check(config[key], annotation, f"{where.get(key, 'baseline')}.{key}")
        if problem:
            problems.append(problem)
        elif key not in OMITTED_AT_DEFAULT or config[key] != OMITTED_AT_DEFAULT[key]:
            resolved[key] = coerce(config[key], annotation)
    for key, kind in COMPONENTS.items():
        resolved[key] = _resolve_component(config[key], kind, registry, key, where, problems)
    loss = _resolve_component(config.get("loss", DEFAULT_LOSS), "loss", registry, "loss", where, problems)
    if loss and loss != _resolve_component(DEFAULT_LOSS, "loss", registry, "loss", {}, []):
        resolved["loss"] = loss  # left out at its default: a config without it keeps its hash
    regs = config["regularizers"]
    path = f"{where.get('regularizers', 'baseline')}.regularizers"
    if not isinstance(regs, list):
        problems.append(f"{path}: expected a list of regularizers such as [{{ name = \"dropout\" }}], got {_show(regs)}")
        regs = []
    resolved["regularizers"] = [_resolve_component(r, "regularizer", registry, f"regularizers[{i}]",
                                                   {f"regularizers[{i}]": where.get("regularizers", "baseline")},
                                                   problems) for i, r in enumerate(regs)]
    names = [r["name"] for r in resolved["regularizers"] if r]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{path}: regularizer {dup!r} is listed twice; list each once")
    steps = config.get("preprocessing", [])
    path = f"{where.get('preprocessing', 'baseline')}.preprocessing"
    if not isinstance(steps, list):
        problems.append(f"{path}: expected a list of preprocessing steps applied in order, such as "
                        f"[\"standardize\"] or [{{ name = \"pca\", variance = 0.95 }}], got {_show(steps)}")
        steps = []
    if steps:  # left out when empty: a config without preprocessing keeps the hash it always had
        resolved["preprocessing"] = [_resolve_component(s, "preprocessing", registry, f"preprocessing[{i}]",
                                                        {f"preprocessing[{i}]": where.get("preprocessing", "baseline")},
                                                        problems) for i, s in enumerate(steps)]
    return resolved, problems


class UnknownComponent(str):
    """A problem of a study file: a component name no plugin registered. Its text gives the
    nearest names; :meth:`told_in_full` adds where components come from (said once per error)."""

    def __new__(cls, path: str, kind: str, name: str, registry):
        tail = registry.not_found(kind, name, full=False) if hasattr(registry, "not_found") else \
            choose_one_of(name, registry.names(kind))
        problem = super().__new__(cls, f"{path}: unknown {kind} {name!r}; {tail}")
        problem.path, problem.kind, problem.name, problem.registry = path, kind, name, registry
        return problem

    def told_in_full(self) -> str:
        if not hasattr(self.registry, "not_found"):
            return str(self)
        return f"{self.path}: unknown {self.kind} {self.name!r}; {self.registry.not_found(self.kind, self.name)}"


def _resolve_component(value, kind: str, registry, key: str, where: dict[str, str], problems: list[str]) -> dict:
    def at(option: str | None = None) -> str:
        """The key path the user wrote this (option of the) component at."""
        source = (where.get(f"{key}.{option}") if option else None) or where.get(key) or "baseline"
        return f"{source}.{key}" + (f".{option}" if option else "")

    path = at()
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        problems.append(f"{path}: expected a {kind} name or a table with a 'name' key, got {_show(value)}; "
                        f"choose one of: {', '.join(registry.names(kind))}")
        return {}
    name = value["name"]
    if not registry.has(kind, name):
        problems.append(UnknownComponent(path, kind, name, registry))
        return {}
    component = registry.get(kind, name)
    out = {"name": name}
    for option in value:
        if option != "name" and option not in component.options:
            tail = choose_one_of(option, component.options) if component.options else "it takes no options"
            problems.append(f"{at(option)}: {kind} {name!r} has no option {option!r}; {tail}")
    for opt in component.options.values():
        if opt.name in value:
            v = value[opt.name]
            problem = check(v, opt.annotation, at(opt.name))
            if problem:
                problems.append(problem)
                continue
            out[opt.name] = coerce(v, opt.annotation)
        elif opt.default is MISSING:
            problems.append(f"{at(opt.name)}: {kind} {name!r} requires this option ({describe(opt.annotation)})")
        else:
            out[opt.name] = coerce(copy.deepcopy(opt.default), opt.annotation)
    return out


# -- small helpers ------------------------------------------------------------------------------


def _table(raw: dict, key: str, path: str, problems: list[str]) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a table, got {_show(value)}")
        return {}
    return value


def _seeds(value, path: str, problems: list[str]) -> tuple[int, ...]:
    def integer(s) -> bool:
        return isinstance(s, int) and not isinstance(s, bool)

    if integer(value) and 1 <= value <= MAX_SEEDS:
        return tuple(range(value))
    if (isinstance(value, list) and value and all(integer(s) and 0 <= s <= MAX_SEED for s in value)
            and len(set(value)) == len(value)):
        return tuple(value)
    problems.append(f"{path}: expected a seed count from 1 to {MAX_SEEDS} or a list of distinct integers from 0 to "
                    f"{MAX_SEED}, got {_show(value)}")
    return (0,)


def _huge_integers(value, path: str, problems: list[str]) -> None:
    """TOML integers are 64-bit, but tomllib reads any: a larger one is a typo (and no float holds it)."""
    if isinstance(value, dict):
        for key, v in value.items():
            _huge_integers(v, f"{path}.{key}" if path else key, problems)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _huge_integers(v, f"{path}[{i}]", problems)
    elif isinstance(value, int) and not -2**63 <= value < 2**63:
        problems.append(f"{path}: an integer of {len(str(abs(value)))} digits is beyond TOML's 64-bit integers "
                        "(-2^63 to 2^63 - 1)")
