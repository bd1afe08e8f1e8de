"""A saved view of the MLflow UI's runs table per study: the study's trials grouped by level, the
headline metrics first, the run names wide enough to read.

MLflow 3 keeps a saved view ("Views" at the top right of an experiment's runs) as an experiment
tag ``mlflow.sharedViewState.<id>`` holding ``{name, createdAt, updatedAt, state}``, ``state`` the
runs table's settings as JSON; ``#/experiments/<id>/runs?viewStateShareKey=<id>`` opens one. dlbench
writes one per study of a study file, named ``<study> (dlbench)``, so one click (or the address
``dlbench ui`` prints) shows what the study asks: its levels, their seeds and their accuracies.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

from dlbench.tracking import keys

VIEW_TAG = "mlflow.sharedViewState."
VIEW_SUFFIX = " (dlbench)"  # a view's name: "<study> (dlbench)"
# the frontend's "Model training" workflow (MLflow 3 otherwise shows GenAI traces first): its
# `workflowType` query parameter (js/build: `new URLSearchParams(...).get("workflowType")`)
MODEL_TRAINING = "workflowType=machine_learning"
HEADLINE_METRICS = ("test_accuracy", "val_accuracy", "train_accuracy")
RUN_NAME_COLUMN = "attributes.`Run Name`"  # the runs table's column ids (ag-grid's col-id)
RUN_NAME_WIDTH = 320  # px: "sigmoid, depth=8, seed=4" and its group's label whole (MLflow's default: 190)


# a qualitative palette (the tab10 colours the report's figures use): a level's seeds share one, levels differ
LEVEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf")


def level_colors(trials) -> dict[tuple[str, str], str]:
    """(study, level label) -> the colour of its runs in the UI's charts (the tag ``mlflow.runColor``,
    MLflow's own run colour): each study's levels in turn, in study-file order."""
    colors: dict[tuple[str, str], str] = {}
    for trial in trials:
        if (trial.study, trial.level) not in colors:
            used = sum(study == trial.study for study, _ in colors)
            colors[(trial.study, trial.level)] = LEVEL_COLORS[used % len(LEVEL_COLORS)]
    return colors


def view_id(study: str) -> str:
    """The saved view's id (the tag's suffix and the address's ``viewStateShareKey``)."""
    return keys.key(f"dlbench.{study}")


def study_view(study: str, factors: list[str], study_run: str) -> dict:
    """The runs table's settings for ``study``: its trials under the study run ``study_run`` (not
    its tuning trials, nor an earlier study run's), grouped by level in the order they started,
    the headline metrics and, for several factors, each factor's level as a column."""
    columns = [*(f"metrics.`{m}`" for m in HEADLINE_METRICS),
               *(f"params.`{keys.key('factor.' + f)}`" for f in factors if len(factors) > 1)]
    return {
        "searchFilter": keys.tags_filter({"dlbench.study": study, "dlbench.role": "trial",
                                          "mlflow.parentRunId": study_run}),
        "orderByKey": "attributes.start_time", "orderByAsc": True,
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME_COLUMN, *columns],
        "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH},
        "runsHiddenMode": "SHOW_ALL",  # every run in the charts, not the first 10
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False,
        "useGroupedValuesInCharts": True, "hideEmptyCharts": True,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "dlbench.level"}]},
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def write_views(client, experiment_id: str, study_run: str, studies: dict[str, list[str]]) -> None:
    """Save a view of each study (name -> its factors) of the study run ``study_run`` on the
    experiment, unless it holds that view already: the latest study run of a study is the one its
    view shows (a view the user changed and saved under another name is theirs)."""
    tags = client.get_experiment(experiment_id).tags
    for study, factors in studies.items():
        tag = VIEW_TAG + view_id(study)
        state = json.dumps(study_view(study, factors, study_run), separators=(",", ":"))
        try:
            old = json.loads(tags.get(tag, "null"))
        except json.JSONDecodeError:
            old = None
        if isinstance(old, dict) and old.get("state") == state:
            continue
        now = int(time.time() * 1000)
        created = old.get("createdAt", now) if isinstance(old, dict) else now
        envelope = {"name": study + VIEW_SUFFIX, "createdAt": created, "updatedAt": now, "state": state}
        client.set_experiment_tag(experiment_id, tag, json.dumps(envelope, ensure_ascii=False))


def view_url(ui: str, experiment_id: str, study: str) -> str:
    """The address of ``study``'s view in the MLflow UI served at ``ui`` (``http://127.0.0.1:5000``)."""
    return (f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING}"
            f"&viewStateShareKey={quote(view_id(study), safe='')}")


def studies_with_views(experiment_tags: dict[str, str]) -> list[str]:
    """The studies an experiment holds a dlbench view of, in the order they were saved."""
    found = []
    for tag, value in experiment_tags.items():
        try:
            envelope = json.loads(value) if tag.startswith(VIEW_TAG) else None
        except json.JSONDecodeError:
            continue
        if isinstance(envelope, dict) and str(envelope.get("name", "")).endswith(VIEW_SUFFIX):
            found.append((envelope.get("createdAt", 0), envelope["name"].removesuffix(VIEW_SUFFIX)))
    return [study for _, study in sorted(found, key=lambda f: f[0])]
