"""An observer as written before the reshape: old import paths, the trial info read as a dict."""

import json
import os

from dlbench import hookimpl
from dlbench.stacking import stackable  # noqa: F401  (the old path of the stacking contract)
from dlbench.study import Trial
from dlbench.train import TrialResult


@hookimpl
def dlbench_trial_start(trial: Trial, model, info):
    line = {"trial": trial.run_name, "device": info["device"], "params": info["num_params"],
            "dataset_hash": info.get("dataset_hash", "")[:8]}
    with open(os.environ["OLD_PATHS_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


@hookimpl
def dlbench_trial_end(trial: Trial, result: TrialResult):
    assert isinstance(result, TrialResult)
