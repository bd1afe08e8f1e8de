"""The settings of a command, built once by the CLI (or by a script) and passed whole.

Frozen dataclasses with no heavy import: ``dlbench run``'s options are one :class:`RunOptions`,
handed to :func:`dlbench.session.run_file` and on, never spread over positional parameters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CHECKPOINT_DIR = Path(".dlbench/checkpoints")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: ./mlflow.db, artifacts in ./mlruns


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI when set, else ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@dataclass(frozen=True)
class RaySettings:
    """``--executor ray``: the cluster (None: a new local one of this machine's cores), what each
    unit of work asks for (``{"cpu": 1, "gpu": 0.5}``), the device spec (auto, cpu, cuda) and how
    many times Ray runs a task again when its worker dies."""

    address: str | None = None
    resources: dict[str, float] = field(default_factory=dict)
    device: str = "auto"
    max_retries: int = 3


@dataclass(frozen=True)
class RunOptions:
    """How to run a study file: every option of ``dlbench run``, with its defaults."""

    study_file: Path | None = None  # None: the caller passes a parsed study file itself
    only: tuple[str, ...] = ()  # --study: run only these studies of the file
    dry_run: bool = False
    tracking_uri: str = field(default_factory=default_tracking_uri)
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    plugins_dir: Path | None = None  # None: plugins/ next to the study file, when there is one
    reports_dir: Path = Path("reports")
    fail_fast: bool = False
    force: bool = False
    deterministic: bool = True
    data_dir: Path | None = None  # prepared datasets (the CLI's default: data/); None: built in memory
    allow_data_mismatch: bool = False
    checkpoint_dir: Path = DEFAULT_CHECKPOINT_DIR
    checkpoint_every: float = 10.0  # seconds between a running trial's epoch-end checkpoints
    jobs: int | None = None  # worker processes (1: in this process; None: as many as there is room for)
    stack_size: int | None = None  # None: the device's default
    cuda_graphs: str = "auto"  # auto, on, off
    tracking_timeout: float | None = None  # how long a tracking server may stay away (None: 600 s)
    ray: RaySettings | None = None  # --executor ray and its options; None: this machine's cores and GPUs
    study_tags: tuple[tuple[str, str], ...] = ()  # more tags of a new study run (a reproduction's)


@dataclass(frozen=True)
class ReproduceOptions:
    """``dlbench reproduce``: the run to re-run and compare, and where."""

    run_id: str
    tracking_uri: str = field(default_factory=default_tracking_uri)
    device: str = "auto"
    plugins_dir: Path | None = None  # None: plugins/ in the working directory, when there is one
    data_dir: Path | None = Path("data")
    tolerance: float = 0.0  # largest absolute difference of a metric value still counted as reproduced


@dataclass(frozen=True)
class CompareOptions:
    """``dlbench compare A B``: two runs of the same studies (a study run id, a study file or a
    report folder each), how to compare them, where the comparison report goes."""

    a: str
    b: str
    tracking_uri: str = field(default_factory=default_tracking_uri)
    metric: str = "test_accuracy"
    margin: float | None = None  # None: each study file's margin, else 0.02 (config.DEFAULT_MARGIN)
    alpha: float = 0.05
    gate: str = "all"  # what must hold for exit 0 (comparison.GATES): all, or claims
    out_dir: Path = Path("comparison")
    only: tuple[str, ...] = ()  # --study: only these studies


@dataclass(frozen=True)
class StudyReproduceOptions:
    """``dlbench reproduce --study``: the study run to re-run whole and compare, and where. The
    options left at None are taken from what the study run recorded."""

    run_id: str
    tracking_uri: str = field(default_factory=default_tracking_uri)
    device: str | None = None  # None: the device type the study trained on (the CPU when it was a GPU not here)
    jobs: int | None = None  # None: the worker processes the study ran with (else auto)
    plugins_dir: Path | None = None  # None: the recorded folder when it is here, else the files the run attached
    data_dir: Path | None = Path("data")
    allow_data_mismatch: bool = False
    reports_dir: Path | None = None  # None: reports/reproductions/<the run id's first 8 characters>
    checkpoint_dir: Path = DEFAULT_CHECKPOINT_DIR
    work_dir: Path = Path(".dlbench/reproductions")  # <run id>/: the study file and plugins when not here as recorded


@dataclass(frozen=True)
class ExportOptions:
    """``dlbench export``: which study run (its id; none: the latest, of ``experiment`` when
    given), the archive to write, and the plugin files and data that go in beside its runs."""

    run_id: str | None = None
    experiment: str | None = None
    output: Path | None = None  # None: <experiment>-<first 8 digits of the run id>.zip in the working directory
    force: bool = False  # replace an existing archive
    tracking_uri: str = field(default_factory=default_tracking_uri)
    plugins_dir: Path | None = None  # None: plugins/ in the working directory, when there is one
    data_dir: Path = Path("data")  # its DVC pointer (data.dvc beside it) goes in; its files with with_data
    with_data: bool = False


@dataclass(frozen=True)
class ImportOptions:
    """``dlbench import``: the archive, the store to recreate its runs in, and the experiment
    (None: the one they were exported from, by name)."""

    archive: Path
    tracking_uri: str = field(default_factory=default_tracking_uri)
    experiment: str | None = None


@dataclass(frozen=True)
class ReportOptions:
    """``dlbench report``: which study run (at most one of the three; none: the latest), which
    of its studies, and where the reports go."""

    study_file: Path | None = None
    run_id: str | None = None
    experiment: str | None = None
    tracking_uri: str = field(default_factory=default_tracking_uri)
    plugins_dir: Path | None = None
    only: tuple[str, ...] = ()
    reports_dir: Path = Path("reports")
    attach: bool = True  # attach each report to the study run as artifacts


@dataclass(frozen=True)
class StatusOptions:
    """``dlbench status``: which study run (the latest of ``study_file``'s experiment, or
    ``run_id``; neither: the latest in the store) and the store it is in."""

    study_file: Path | None = None
    run_id: str | None = None
    tracking_uri: str = field(default_factory=default_tracking_uri)
