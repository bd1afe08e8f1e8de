"""``dlbench import``: an archive of ``dlbench export`` checked whole (by
:mod:`dlbench.tracking.archive`), then its runs made again in one experiment of a target store,
parents first, in as few MLflow calls as its limits allow; runs already there are skipped."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (MAX_BATCH_LOG_REQUEST_SIZE, MAX_DATASETS_PER_BATCH, MAX_ENTITIES_PER_BATCH,
                                     MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH)

from dlbench.errors import UserError
from dlbench.paths import artifact_location
from dlbench.settings import ImportOptions
from dlbench.tracking import views
from dlbench.tracking.archive import (ENDED, IMPORT_COMPLETE, IMPORT_TAGS, IMPORTED_ARCHIVE, IMPORTED_FROM,
                                      IMPORTED_STATUS, read_runs, unpack_checked)
from dlbench.tracking.base import EXPERIMENT_KIND
from dlbench.tracking.lock import store_lock
from dlbench.tracking.relocate import require_in_place
from dlbench.tracking.server import require_reachable
from dlbench.tracking.store import search_all
from dlbench.tracking.study_run import PROCESS_TAG


@dataclass(frozen=True)
class Imported:
    """What ``dlbench import`` did: the study run in the target store (and its original id), the
    experiment, how many runs it made (``replaced`` of them in place of a half-finished import's)
    and found already there, the manifest's SHA-256 and the target store."""

    study_run_id: str
    original_study_run_id: str
    experiment: str
    imported: int
    present: int
    replaced: int
    sha256: str
    tracking_uri: str


def import_archive(options: ImportOptions) -> Imported:
    """Check the archive ``options.archive`` whole, then make its runs in the target store;
    see :class:`Importer` for what is made and what is skipped."""
    archive = Path(options.archive)
    # no "View run at <url>" line per run from a tracking server's client (a user's own setting wins)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    with tempfile.TemporaryDirectory(prefix="dlbench-import-") as tmp:
        folder = Path(tmp)
        manifest, sha = unpack_checked(archive, folder)
        records = read_runs(archive, manifest, folder)
        uri = options.tracking_uri
        require_reachable(uri)
        require_in_place(uri, "dlbench import")  # artifacts would go to the folder it was copied from
        experiment = options.experiment or manifest["experiment"]
        with store_lock(uri):  # two imports at once into one local store would both make the runs
            importer = Importer(_open_target(uri, experiment), sha, folder)
            importer.run(records)
    study = manifest["study_run_id"]
    return Imported(importer.ids[study], study, experiment, importer.made, importer.present, importer.replaced, sha,
                    uri)


def _open_target(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """The target store's client and the experiment, made when missing (artifacts beside a
    SQLite file, as ``dlbench run`` makes it)."""
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return client, client.create_experiment(experiment, artifact_location=artifact_location(uri, experiment),
                                                    tags=dict([EXPERIMENT_KIND]))
    except Exception as exc:  # a bad URI, a file that is no MLflow database, a read-only folder
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot open the MLflow tracking store {uri!r}: {first}. Check --tracking-uri "
                        "(sqlite:///mlflow.db, or http://HOST:PORT of an `mlflow server`).") from exc
    if exp.lifecycle_stage != "active":
        raise UserError(f"experiment {experiment!r} of {uri} is deleted: restore it (`mlflow experiments restore "
                        f"--experiment-id {exp.experiment_id}`) or import into another with --experiment NAME")
    if EXPERIMENT_KIND[0] not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return client, exp.experiment_id


def _chunks(items: list, size: int):
    """``items`` in lists of at most ``size`` (MLflow's per-call limits)."""
    return (items[i:i + size] for i in range(0, len(items), size))


BATCH_BYTES = MAX_BATCH_LOG_REQUEST_SIZE // 2  # of keys and values: a request's JSON adds names and quotes


def batches(params: list[Param], tags: list[RunTag], metrics: list[Metric]):
    """The keyword arguments of as few ``log_batch`` calls as MLflow's limits allow (100 params,
    100 tags, 1000 metrics and 1000 of them in all per call, a request under 1 MB): a SQLite
    store commits each call, and a server answers each one."""
    kinds = {"params": deque(params), "tags": deque(tags), "metrics": deque(metrics)}
    most = {"params": MAX_PARAMS_TAGS_PER_BATCH, "tags": MAX_PARAMS_TAGS_PER_BATCH, "metrics": MAX_METRICS_PER_BATCH}
    while any(kinds.values()):
        batch: dict[str, list] = {kind: [] for kind in kinds}
        room, size = MAX_ENTITIES_PER_BATCH, 0
        for kind, items in kinds.items():
            while items and room and len(batch[kind]) < most[kind]:
                item = items[0]
                weight = len(item.key) + len(str(item.value)) + 64  # 64: a metric's step and timestamp, the JSON
                if size + weight > BATCH_BYTES and size:
                    room = 0
                    break
                batch[kind].append(items.popleft())
                room, size = room - 1, size + weight
        yield {kind: items for kind, items in batch.items() if items}


@dataclass
class Importer:
    """Makes an archive's runs in one experiment of a store, parents first.

    A run already there is skipped: one imported before (tag ``dlbench.imported_from`` = its
    original id, ``dlbench.import_complete`` = true) or the original itself (importing into the
    store it came from). One whose import was cut short (no ``import_complete``) is deleted and
    made again. The others are made in two passes: every run first, with its parent's new id, so
    that every id is known; then each one's params, tags and metrics (values that are the id of
    an archived run rewritten to its new id), dataset inputs and artifacts, its status and end
    time, and ``import_complete`` last. A run kept from an earlier import has its tags that name
    a run made again pointed at the new one."""

    target: tuple[MlflowClient, str]  # the client and the experiment id
    sha: str
    folder: Path
    ids: dict[str, str] = field(default_factory=dict)  # original run id -> the run id in the target store
    made: int = 0
    present: int = 0
    replaced: int = 0

    @property
    def client(self) -> MlflowClient:
        return self.target[0]

    def run(self, records: dict[str, dict]) -> None:
        found = self._found(list(records))
        to_make = []
        for run_id in records:
            runs = found.get(run_id, [])
            complete = [r for r in runs if r.data.tags.get(IMPORT_COMPLETE) == "true" or r.info.run_id == run_id]
            if complete:
                self.ids[run_id] = complete[0].info.run_id
                self.present += 1
                continue
            for half in runs:  # a cut-short import of this run: made again
                self.client.delete_run(half.info.run_id)
            self.replaced += bool(runs)
            self.ids[run_id] = self._create(records[run_id])
            to_make.append(run_id)
            self.made += 1
        for run_id in to_make:
            self._fill(records[run_id], self.ids[run_id])
        self._relink(records, [r for r in records if r not in to_make], found)
        self._write_views(records, to_make)

    def _found(self, run_ids: list[str]) -> dict[str, list]:
        """Original run id -> the active runs of the target experiment that are it: imported
        copies (complete or not), or the original itself."""
        experiment_id = self.target[1]
        found: dict[str, list] = {}
        for run in search_all(self.client, experiment_id, {}, f"tags.`{IMPORTED_FROM}` LIKE '%'"):
            found.setdefault(run.data.tags[IMPORTED_FROM], []).append(run)
        for chunk in _chunks(run_ids, 100):
            quoted = ", ".join(f"'{r}'" for r in chunk)  # run ids: letters, digits, _ and - (checked)
            for run in search_all(self.client, experiment_id, {}, f"attributes.run_id IN ({quoted})"):
                found.setdefault(run.info.run_id, []).append(run)
        return found

    def _rewritten(self, values: dict[str, str]) -> dict[str, str]:
        """``values`` with each value that is an archived run's id replaced by that run's id here."""
        return {k: self.ids.get(v, v) for k, v in values.items()}

    def _create(self, record: dict) -> str:
        """The run, made with its start time, name, author, parent and import tags (the rest in
        :meth:`_fill`)."""
        tags = record["tags"]
        first = {k: tags[k] for k in ("mlflow.user", "mlflow.parentRunId") if k in tags}
        first = self._rewritten(first) | {IMPORTED_FROM: record["run_id"], IMPORTED_ARCHIVE: self.sha}
        run = self.client.create_run(self.target[1], start_time=record["start_time"], tags=first,
                                     run_name=record.get("run_name"))
        return run.info.run_id

    def _fill(self, record: dict, run_id: str) -> None:
        """Everything of the run but its start, then its end, then ``import_complete``."""
        client = self.client
        params = [Param(k, v) for k, v in self._rewritten(record["params"]).items()]
        # an archive of imported runs: this import's tags replace the earlier one's; and no tag of a
        # process at work on the original's machine
        tags = {k: v for k, v in self._rewritten(record["tags"]).items()
                if k != "mlflow.runName" and k not in IMPORT_TAGS and not k.startswith(PROCESS_TAG)}
        status = record["status"] if record["status"] in ENDED else "KILLED"  # nothing will ever end it
        if status != record["status"]:
            tags[IMPORTED_STATUS] = record["status"]
        metrics = [Metric(key, value, timestamp, step) for key, rows in record["metrics"].items()
                   for step, timestamp, value in rows]
        for batch in batches(params, [RunTag(k, v) for k, v in tags.items()], metrics):
            client.log_batch(run_id, **batch)
        datasets = [DatasetInput(Dataset(**d["dataset"]), [InputTag(k, v) for k, v in d["tags"].items()])
                    for d in record.get("inputs", [])]
        for chunk in _chunks(datasets, MAX_DATASETS_PER_BATCH):
            client.log_inputs(run_id, datasets=chunk)
        artifacts = self.folder / "runs" / record["run_id"] / "artifacts"
        if any(p.is_file() for p in artifacts.rglob("*")):
            client.log_artifacts(run_id, str(artifacts))
        client.set_terminated(run_id, status, end_time=record.get("end_time") or int(time.time() * 1000))
        client.set_tag(run_id, IMPORT_COMPLETE, "true")

    def _relink(self, records: dict[str, dict], kept: list[str], found: dict[str, list]) -> None:
        """Point the tags of runs kept from an earlier import that name an archived run at its
        run here (one made again now has a new id)."""
        for run_id in kept:
            target = self.ids[run_id]
            now = next((r.data.tags for r in found.get(run_id, []) if r.info.run_id == target), {})
            for key, value in record_refs(records[run_id], self.ids).items():
                if now.get(key) != value:
                    self.client.set_tag(target, key, value)

    def _write_views(self, records: dict[str, dict], made: list[str]) -> None:
        """A saved view of each study of an imported study run, as ``dlbench run`` makes, where
        the experiment has none of that study yet (the user's own study runs keep theirs)."""
        experiment_id = self.target[1]
        existing = self.client.get_experiment(experiment_id).tags
        for run_id in made:
            if records[run_id]["tags"].get("dlbench.role") != "study":
                continue
            studies: dict[str, list[str]] = {}
            for record in records.values():
                tags = record["tags"]
                if tags.get("mlflow.parentRunId") == run_id and tags.get("dlbench.role") == "trial":
                    studies.setdefault(tags.get("dlbench.study", ""), list(_levels(tags)))
            fresh = {s: f for s, f in studies.items() if views.VIEW_TAG + views.view_id(s) not in existing}
            if fresh:
                views.write_views(self.client, experiment_id, self.ids[run_id], fresh)


def _levels(tags: dict[str, str]) -> dict:
    """A trial's factors and levels (its ``dlbench.levels`` tag), {} when it has none readable."""
    try:
        levels = json.loads(tags.get("dlbench.levels", "{}"))
    except ValueError:
        return {}
    return levels if isinstance(levels, dict) else {}


def record_refs(record: dict, ids: dict[str, str]) -> dict[str, str]:
    """The tags of a run that name an archived run, with that run's id in the target store."""
    return {k: ids[v] for k, v in record["tags"].items() if v in ids and k not in IMPORT_TAGS}
