"""``dlbench compare A B``: does each study's conclusion hold in a second run of it?

A side is a study run (its id), a study file (its latest study run) or a report folder (``reports/``
or the committed ``docs/reference/``, as ``dlbench run`` wrote it). Both are read into the same
tables: one row per trial (study, level, seed, status, final metrics, config hash and where it
ran: ``dlbench.trial.PROVENANCE``) and one row per claim with its verdict. The statistics are
``report.compare``'s (each level's two means, the difference with its interval, an equivalence
test at a margin); what differs between the two runs in config, data, code or machine is listed
beside them, never hidden. The comparison passes when every claim's verdict agrees and every
level is equivalent: ``dlbench compare`` exits 0 then, 1 otherwise, so it can gate CI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dlbench.config import DEFAULT_MARGIN, read_study_file
from dlbench.errors import UserError, choose_one_of
from dlbench.paths import PLUGINS_RECORD, read_report_marker
from dlbench.plugins import by_file_name
from dlbench.report.compare import compare_claims, compare_trials
from dlbench.report.data import parse_attached_study_file, study_data
from dlbench.report.stats import judge_claims
from dlbench.tracking.reader import find_study_run, read_study_run
from dlbench.tracking.store import Store

# what a difference in each provenance column is a difference of, in the order they are listed
KINDS = {"config_hash": "config", "dataset_hash": "data", "git_commit": "code", "dlbench_version": "code",
         "torch_version": "code", "python_version": "code", "plugins": "code", "device": "machine",
         "device_name": "machine", "torch_threads": "machine", "host": "machine"}
CLAIM_COLUMNS = ["study", "claim", "verdict"]
SHOWN = 4  # values or trials named in one difference before "and N more"


@dataclass
class Side:
    """One run of the studies, as read for a comparison."""

    spec: str  # as the user named it
    where: str  # what it is, in words: "study run 3f2a... (ablation.toml, 2026-12-06 22:40) in sqlite:///mlflow.db"
    trials: pd.DataFrame  # study, level, seed, status, final metrics, config_hash, plugins and PROVENANCE (if known)
    claims: pd.DataFrame  # study, claim, verdict
    margins: dict[str, float] = field(default_factory=dict)  # study -> its study file's margin, when known
    run_id: str | None = None  # the study run; None for a report folder
    plugin_files: dict[str, str] | None = None  # the local plugin files the study run loaded: name -> sha256

    @property
    def short(self) -> str:
        """How titles name it: as the user did, a study run's id to its first 8 characters."""
        return f"run {self.spec[:8]}" if self.run_id and self.spec == self.run_id else self.spec


@dataclass
class Comparison:
    """Two sides compared: per level, per claim, and what differs in how they were made."""

    a: Side
    b: Side
    metric: str
    alpha: float
    levels: pd.DataFrame  # report.compare.COLUMNS
    claims: pd.DataFrame  # study, claim, verdict_a, verdict_b, agree
    differences: pd.DataFrame  # kind, what, a, b (DIFFERENCE_COLUMNS)

    @property
    def identical(self) -> bool:
        """Every level's seeds gave the same values on both sides: a bit-for-bit re-run."""
        return bool(len(self.levels)) and bool(self.levels["identical"].all())

    @property
    def passed(self) -> bool:
        """Every claim's verdict agrees and every level (of either side) is equivalent."""
        return (bool(len(self.levels)) and bool(self.levels["equivalent"].all())
                and bool(self.claims["agree"].all()))

    @property
    def kind(self) -> str:
        """Which comparison it made: bit for bit where every value matched, else statistical."""
        if self.identical:
            return f"bit-for-bit: every seed of every level has the same final {self.metric} on both sides"
        margins = sorted(set(self.levels["margin"].dropna()))
        at = " or ".join(f"{m:g}" for m in margins) or f"{DEFAULT_MARGIN:g}"
        return (f"statistical: two one-sided tests of equivalence of each level's mean {self.metric} within "
                f"±{at}, alpha = {self.alpha:g}")

    def difference_lines(self) -> list[str]:
        """One line per recorded difference: ``code: git_commit 903414a32f81 in A, 1df8fa0e2c11 in B``."""
        return [_difference_line(r) for r in self.differences.itertuples()]

    def failures(self) -> list[str]:
        """Why it did not pass, one line each (empty when it passed)."""
        out = [f"claim {r.study}: {r.claim!r} is {r.verdict_a or 'absent'} in A, {r.verdict_b or 'absent'} in B"
               for r in self.claims.itertuples() if not r.agree]
        for r in self.levels.itertuples():
            if r.equivalent:
                continue
            if r.note and (not r.n_a or not r.n_b):
                out.append(f"level {r.study}/{r.level}: {r.note}")
            else:
                out.append(f"level {r.study}/{r.level}: B - A = {r.diff:+.4f} (90% interval {r.tost_low:+.4f} to "
                           f"{r.tost_high:+.4f}) is not shown to be within ±{r.margin:g}"
                           + (f" ({r.note})" if r.note else ""))
        return out


DIFFERENCE_COLUMNS = ["kind", "what", "a", "b"]


def _difference_line(r) -> str:
    if r.what == "config_hash":
        return f"{r.kind}: {r.b}"
    if r.kind == "unknown":
        side = "A" if not r.a else "B"
        return f"unknown: {side} does not record {r.what} (written by an older dlbench)"
    return f"{r.kind}: {r.what} {r.a} in A, {r.b} in B"


def load_side(spec: str, tracking_uri: str, studies: list[str] | None = None) -> Side:
    """The side ``spec`` names: a report folder, a study file (its latest study run in
    ``tracking_uri``) or a study run's id; only ``studies`` when given."""
    path = Path(spec)
    if path.is_dir():
        return _report_folder_side(spec, path, studies)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise UserError(f"{spec}: no such study file (a side is a study run id, a study file or a report folder)")
        sf = read_study_file(path)
        run_id = find_study_run(tracking_uri, experiment=sf.name)
        return _study_run_side(spec, tracking_uri, run_id, studies)
    if "/" in spec or "\\" in spec:
        raise UserError(f"{spec}: no such report folder (a side is a study run id, a study file or a report folder "
                        "such as reports/ or docs/reference/)")
    return _study_run_side(spec, tracking_uri, find_study_run(tracking_uri, run_id=spec), studies)


def _study_run_side(spec: str, tracking_uri: str, run_id: str, studies: list[str] | None) -> Side:
    """A study run read as its report reads it (the level labels, the claims of its attached
    study file, judged the same way); no metric history is read."""
    record = read_study_run(tracking_uri, run_id, studies, history=lambda metric: False)
    sf, why = parse_attached_study_file(record.study_file_name, record.study_file_text)
    known = {s.name: s for s in sf.studies} if sf is not None else {}
    present = list(dict.fromkeys(record.trials["study"])) if len(record.trials) else []
    present = [s for s in known if s in present] + [s for s in present if s not in known]  # the file's order
    trials, claims = [], []
    for name in present:
        data = study_data(record, name, known.get(name), why or f"study {name!r} is not in the attached study file")
        trials.append(data.trials.assign(study=name))
        if data.claims:
            table = judge_claims(data.trials, data.claims, data.alpha)
            claims.append(table.assign(study=name)[CLAIM_COLUMNS])
    started = pd.Timestamp(record.start_time, unit="ms").strftime("%Y-%m-%d %H:%M")
    where = f"study run {run_id} ({record.run_name}, started {started} UTC) in {tracking_uri}"
    plugins_json = Store(tracking_uri).artifact_text(run_id, PLUGINS_RECORD)  # runs before it: None, not known
    files = json.loads(plugins_json).get("files", {}) if plugins_json else None
    return Side(spec, where, _concat(trials), _concat(claims, CLAIM_COLUMNS),
                {s: known[s].margin for s in present if s in known}, run_id, files)


def _report_folder_side(spec: str, path: Path, studies: list[str] | None) -> Side:
    """A report folder: one study's (it holds ``trials.csv``) or a folder of them (``reports/``)."""
    folders = [path] if (path / "trials.csv").is_file() else sorted(
        p for p in path.iterdir() if (p / "trials.csv").is_file())
    if not folders:
        raise UserError(f"{spec}: not a report folder: it holds no trials.csv, nor folders that do (a side is a "
                        "study run id, a study file or a report folder such as reports/ or docs/reference/)")
    trials, claims = [], []
    for folder in folders:
        study = (read_report_marker(folder) or {}).get("study") or folder.name
        if studies and study not in studies:
            continue
        frame = pd.read_csv(folder / "trials.csv", dtype={"level": str}, keep_default_na=False,
                            na_values={m: ["", "nan", "NaN"] for m in _metric_columns(folder)})
        trials.append(frame.assign(study=study))
        if (folder / "claims.csv").is_file():
            claims.append(pd.read_csv(folder / "claims.csv", keep_default_na=False).assign(study=study)[CLAIM_COLUMNS])
    return Side(spec, f"report folder {path}", _concat(trials), _concat(claims, CLAIM_COLUMNS))


def _metric_columns(folder: Path) -> list[str]:
    header = (folder / "trials.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    return [c for c in header if c.endswith(("_accuracy", "_loss", "_gap"))]


def _concat(frames: list[pd.DataFrame], columns: list[str] | None = None) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or ["study", "level"])


def compare(a: Side, b: Side, metric: str = "test_accuracy", margin: float | None = None,
            alpha: float = 0.05) -> Comparison:
    """``a`` and ``b`` compared on ``metric``: each study's levels at ``margin`` (else the study
    file's ``margin``, A's then B's, else :data:`DEFAULT_MARGIN`), the claims, the differences."""
    for side in (a, b):
        if len(side.trials) and metric not in side.trials:
            raise UserError(f"--metric {metric!r}: {side.spec} has no such metric; "
                            f"{choose_one_of(metric, [c for c in side.trials if c.endswith(('_accuracy', '_loss'))])}")
    if not metric.endswith("_accuracy") and margin is None:
        raise UserError(f"--metric {metric}: give --margin (the default margin, {DEFAULT_MARGIN:g}, is for "
                        "accuracies: 2 points)")
    studies = list(dict.fromkeys([*studies_of(a), *studies_of(b)]))
    levels = []
    for study in studies:
        at = margin if margin is not None else a.margins.get(study, b.margins.get(study, DEFAULT_MARGIN))
        levels.append(compare_trials(_of(a.trials, study), _of(b.trials, study), metric, at, alpha))
    return Comparison(a, b, metric, alpha, pd.concat(levels, ignore_index=True) if levels else compare_trials(
        a.trials, b.trials, metric), compare_claims(a.claims, b.claims), differences(a, b))


def studies_of(side: Side) -> list[str]:
    """The studies a side has trials of, in its order."""
    return list(dict.fromkeys(side.trials["study"].astype(str))) if len(side.trials) else []


def _of(trials: pd.DataFrame, study: str) -> pd.DataFrame:
    return trials[trials["study"].astype(str) == study] if len(trials) else trials


def differences(side_a: Side, side_b: Side) -> pd.DataFrame:
    """What differs in how the two sides' trials were made: configs trial by trial (by study,
    level and seed), each provenance column's values (``KINDS``) and the local plugin files'
    contents; a column one side did not record is said to be unknown there."""
    a, b, rows = side_a.trials, side_b.trials, []
    configs = _config_differences(a, b)
    if configs:
        rows.append({"kind": "config", "what": "config_hash", "a": "", "b": configs})
    for name in sorted(set(side_a.plugin_files or {}) | set(side_b.plugin_files or {})):
        if side_a.plugin_files is None or side_b.plugin_files is None:
            break  # not recorded on one side
        digest_a, digest_b = side_a.plugin_files.get(name), side_b.plugin_files.get(name)
        if digest_a != digest_b:
            rows.append({"kind": "code", "what": f"plugin file {name}", "a": (digest_a or "absent")[:12],
                         "b": (digest_b or "absent")[:12]})
    unrecorded = {"A": [], "B": []}
    for column, kind in KINDS.items():
        if column == "config_hash":
            continue
        values_a, values_b = _values(a, column), _values(b, column)
        if values_a == values_b:
            continue
        if values_a is None or values_b is None:  # one side does not say: unknown, not different
            unrecorded["A" if values_a is None else "B"].append(column)
            continue
        if column == "plugins" and values_a is not None and values_b is not None:  # what changed, not all
            values_a, values_b = tuple(sorted(set(values_a) - set(values_b))), tuple(sorted(set(values_b) - set(values_a)))
        rows.append({"kind": kind, "what": column, "a": _listed(values_a), "b": _listed(values_b)})
    for side, columns in unrecorded.items():
        if columns:
            rows.append({"kind": "unknown", "what": ", ".join(columns), "a": "" if side == "A" else "recorded",
                         "b": "" if side == "B" else "recorded"})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def _config_differences(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """The trials (in both) whose resolved config hashes differently: what changed is the study itself."""
    if "config_hash" not in a or "config_hash" not in b or not len(a) or not len(b):
        return ""
    keys = ["study", "level", "seed"]
    both = a[[*keys, "config_hash"]].astype(str).merge(b[[*keys, "config_hash"]].astype(str), on=keys)
    changed = both[both["config_hash_x"] != both["config_hash_y"]]
    if not len(changed):
        return ""
    names = [f"{r.study}/{r.level} seed {r.seed}" for r in changed.itertuples()]
    return f"{len(changed)} of {len(both)} trials resolve to another config: " + _some(names)


def _values(trials: pd.DataFrame, column: str) -> tuple[str, ...] | None:
    """The distinct values of a column (a trial's plugins: each line on its own); None when unrecorded."""
    if column not in trials or not len(trials):
        return None
    values = trials[column].fillna("").astype(str)
    if column == "plugins":  # a local plugin by its file's name: the folder is where it was, not what it is
        values = pd.Series([by_file_name(line) for v in values for line in v.split("; ") if line])
    found = tuple(sorted(set(values) - {""}))
    return found or None


def _listed(values: tuple[str, ...] | None) -> str:
    if values is None:
        return "not recorded"
    if not values:
        return "-"
    return _some([v[:12] if len(v) == 64 or len(v) == 40 else v for v in values])  # hashes and commits shortened


def _some(items: list[str]) -> str:
    more = len(items) - SHOWN
    return "; ".join(items[:SHOWN]) + (f"; and {more} more" if more > 0 else "")


GATES = {"all": "every claim's verdict agrees and every level is equivalent",
         "claims": "every claim's verdict agrees and every level finished as many seeds on both sides"}
SHOWN_LEVELS = 30  # levels listed one per line in the terminal; beyond, only those that fail


def gate_passed(c: Comparison, gate: str = "all") -> bool:
    """Whether ``c`` passes ``gate`` (:data:`GATES`): ``all`` (the default: the results hold),
    or ``claims`` (the conclusions hold, whatever the last digits: another CPU's reductions)."""
    if gate == "all":
        return c.passed
    seeds = bool(len(c.levels)) and bool((c.levels["n_a"] == c.levels["n_b"]).all() and (c.levels["n_a"] > 0).all())
    return seeds and bool(c.claims["agree"].all())


def summary(c: Comparison, gate: str = "all") -> str:
    """The comparison as the terminal shows it: both sides, the kind, what differs, each level
    (or, in a large study, those that fail), the claims and the verdict."""
    lines = [f"A: {c.a.where}", f"B: {c.b.where}", f"comparison: {c.kind}"]
    lines += [f"differs: {line}" for line in c.difference_lines()] or ["differs: nothing recorded (configs, data, "
                                                                       "code and machine are the same)"]
    levels = c.levels if len(c.levels) <= SHOWN_LEVELS else c.levels[~c.levels["equivalent"]]
    width = max([len(f"{r.study}/{r.level}") for r in levels.itertuples()] + [5])
    for r in levels.itertuples():
        lines.append(f"  {f'{r.study}/{r.level}':<{width}}  {_level_line(r)}")
    held = int(c.levels["identical"].sum()), int(c.levels["equivalent"].sum()), len(c.levels)
    lines.append(f"levels: {held[2]} compared, {held[0]} identical, {held[1]} equivalent within the margin")
    agree = int(c.claims["agree"].sum())
    lines.append(f"claims: {agree} of {len(c.claims)} verdicts agree" if len(c.claims) else "claims: none made")
    lines += [f"  {r.study}: {r.claim}: {r.verdict_a or 'absent'} in A, {r.verdict_b or 'absent'} in B"
              for r in c.claims.itertuples() if not r.agree]
    lines.append(verdict_line(c, gate))
    return "\n".join(lines) + "\n"


def verdict_line(c: Comparison, gate: str = "all") -> str:
    """``PASSED: ...`` (what held) or ``FAILED: ...`` (what did not, counted)."""
    if gate_passed(c, gate):
        return f"PASSED: {GATES[gate]}"
    moved = int((~c.levels["equivalent"]).sum()) if gate == "all" else int(
        ((c.levels["n_a"] != c.levels["n_b"]) | (c.levels["n_a"] == 0)).sum())
    what = "not shown equivalent" if gate == "all" else "with other finished seeds on the two sides"
    disagree = int((~c.claims["agree"]).sum())
    parts = [f"{moved} of {len(c.levels)} levels {what}"] if moved else []
    parts += [f"{disagree} of {len(c.claims)} claims' verdicts differ"] if disagree else []
    return "FAILED: " + "; ".join(parts or ["no level to compare"])


def _level_line(r) -> str:
    if not r.n_a or not r.n_b:
        return r.note
    if r.identical:
        return f"A {r.mean_a:.4f}  B {r.mean_b:.4f}  identical"
    verdict = "equivalent" if r.equivalent else "NOT shown equivalent"
    return (f"A {r.mean_a:.4f}  B {r.mean_b:.4f}  B-A {r.diff:+.4f} [{r.tost_low:+.4f}, {r.tost_high:+.4f}] "
            f"{r.test}  {verdict}" + (f" ({r.note})" if r.note else ""))
