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
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from dlbench.errors import ConfigError, choose_one_of
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
STUDY_META_KEYS = ["name", "description", "seeds", "alpha"]
STUDY_KEYS = ["question", "description", "seeds", "reference", "baseline", "levels", "factors", "claims", "alpha",
              "tune"]
LEVEL_KEYS = [*BASELINE_KEYS, "tune"]  # a level may add to (or set) its study's search space
CLAIM_KEYS = ["level", "beats", "metric"]
# What a claim may compare, and which way is better: final-epoch metrics of each trial.
CLAIM_METRICS = {f"{split}_{m}": m == "accuracy" for split in ("test", "val", "train") for m in ("accuracy", "loss")}
CLAIM_METRICS["generalization_gap"] = False  # train minus test accuracy: lower is better
DEFAULT_ALPHA = 0.05
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
class Study:
    name: str
    question: str
    factors: tuple[Factor, ...]
    seeds: tuple[int, ...]
    reference: dict[str, str]  # factor -> its reference level (the first level unless set)
    overrides: dict = field(default_factory=dict)
    claims: tuple[Claim, ...] = ()
    alpha: float = DEFAULT_ALPHA  # significance level of the claims' verdicts
    tune: dict | None = None  # the study's tune table, checked (dlbench/tuning/space.py)

    @property
    def factor_names(self) -> list[str]:
        return [f.name for f in self.factors]


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
        study = _parse_study(sname, sraw, default_seeds, problems, default_alpha)
        if study is not None:
            studies.append(study)
    if problems:
        raise ConfigError(str(path), problems)
    return StudyFile(path, name, description, baseline, tuple(studies), text)


def _parse_study(name: str, raw: dict, default_seeds: tuple[int, ...], problems: list[str],
                 default_alpha: float = DEFAULT_ALPHA) -> Study | None:
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
    ref_raw = raw.get("reference")
    if ref_raw is not None:
        if len(factors) == 1 and isinstance(ref_raw, str):
            ref_raw = {factors[0].name: ref_raw}
        if not isinstance(ref_raw, dict):
            problems.append(f"{where}.reference: expected a level name (or a table factor = level), got {_show(ref_raw)}")
        else:
            for fname, lname in ref_raw.items():
                factor = next((f for f in factors if f.name == fname), None)
                if factor is None:
                    problems.append(f"{where}.reference.{fname}: unknown factor; "
                                    f"{choose_one_of(fname, [f.name for f in factors])}")
                elif lname not in factor.levels:
                    problems.append(f"{where}.reference: unknown level {lname!r} of factor {fname!r}; "
                                    f"{choose_one_of(str(lname), factor.level_names)}")
                else:
                    reference[fname] = lname
    question = raw.get("question", raw.get("description", ""))
    alpha = _alpha(raw["alpha"], f"{where}.alpha", problems) if "alpha" in raw else default_alpha
    claims = _claims(raw.get("claims", []), factors, f"{where}.claims", problems)
    tune = _tune(raw.get("tune"), factors, where, level_where, problems)
    return Study(name, str(question), tuple(factors), seeds, reference, normalize(overrides), claims, alpha, tune)


def _tune(raw, factors: list[Factor], where: str, level_where: dict[str, str], problems: list[str]) -> dict | None:
    """Check the study's tune table and each level's (merged over the study's); the study's, raw."""
    if raw is not None and parse_tune(raw, f"{where}.tune", problems) is None:
        return None
    for factor in factors:
        for lname, own in factor.tunes.items():
            parse_tune(merge_tune(raw, own) if isinstance(own, dict) else own,
                       f"{level_where[factor.name]}.{toml_key(lname)}.tune", problems)
    return raw


def _claims(raw, factors: list[Factor], where: str, problems: list[str]) -> tuple[Claim, ...]:
    """``claims = [{ level = "on", beats = "off", metric = "test_accuracy" }, ...]``."""
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
        unknown_keys(item, CLAIM_KEYS, f"{path}.", problems)
        sides = {}
        for key in ("level", "beats"):
            if key not in item:
                problems.append(f"{path}.{key}: missing; a claim names the level that wins (level) and the one it "
                                f"beats (beats), {example}")
            else:
                sides[key] = _claim_cell(item[key], factors, f"{path}.{key}", problems)
        metric = item.get("metric", "test_accuracy")
        if metric not in CLAIM_METRICS:
            problems.append(f"{path}.metric: unknown metric {_show(metric)}; {choose_one_of(str(metric), CLAIM_METRICS)}")
            continue
        if len(sides) == 2 and None not in sides.values():
            if sides["level"] == sides["beats"]:
                problems.append(f"{path}: a level cannot beat itself ({level_label(sides['level'])!r}); "
                                "name two different levels")
                continue
            claims.append(Claim(sides["level"], sides["beats"], metric))
    return tuple(claims)


def _claim_cell(value, factors: list[Factor], path: str, problems: list[str]) -> dict[str, str] | None:
    """One side of a claim: a level name (one factor), ``"a=x,b=y"``, or a table factor = level."""
    names = [f.name for f in factors]
    if isinstance(value, str) and len(factors) == 1:
        value = {names[0]: value}
    elif isinstance(value, str) and all("=" in part for part in value.split(",")):
        value = dict(part.split("=", 1) for part in value.split(","))
    if not isinstance(value, dict):
        example = ", ".join(f'{f.name} = "{f.level_names[-1]}"' for f in factors)
        problems.append(f"{path}: expected a table naming a level of every factor, e.g. {{ {example} }} "
                        f"(or the run label \"{','.join(f'{f.name}={f.level_names[-1]}' for f in factors)}\"), "
                        f"got {_show(value)}")
        return None
    cell, ok = {}, True
    for fname, lname in value.items():
        factor = next((f for f in factors if f.name == fname), None)
        lname = str(lname) if isinstance(lname, int) and not isinstance(lname, bool) else lname  # depth = 8
        if factor is None:
            problems.append(f"{path}.{fname}: unknown factor; {choose_one_of(fname, names)}")
            ok = False
        elif not isinstance(lname, str) or lname not in factor.levels:
            where = f"{path}" if len(factors) == 1 else f"{path}.{fname}"
            shown = repr(lname) if isinstance(lname, str) else _show(lname)
            problems.append(f"{where}: unknown level {shown} of factor {fname!r}; "
                            f"{choose_one_of(str(lname), factor.level_names)}")
            ok = False
        else:
            cell[fname] = lname
    missing = [n for n in names if n not in value]
    if ok and missing:
        problems.append(f"{path}: name a level of every factor of the study (missing: {', '.join(missing)})")
        ok = False
    return {n: cell[n] for n in names} if ok else None


def _alpha(value, path: str, problems: list[str]) -> float:
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    problems.append(f"{path}: expected a significance level between 0 and 1 such as 0.05, got {_show(value)}")
    return DEFAULT_ALPHA


# -- merging and resolution ---------------------------------------------------------------------


def normalize(config: dict) -> dict:
    """Component shorthands (``optimizer = "adam"``) become tables (``{name = "adam"}``)."""
    out = copy.deepcopy(config)
    for key in COMPONENTS:
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
        problems.append(f"{path}: unknown {kind} {name!r}; {choose_one_of(name, registry.names(kind))}")
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
