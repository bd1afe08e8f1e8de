"""dlbench: deep-learning ablation studies you can trust.

The one namespace plugin authors import from (as pluggy and pytest re-export from private
modules)::

    from dlbench import Range, hookimpl, stackable

    @hookimpl
    def dlbench_register_activations(register):
        register("swish", swish)

Every name below is importable from ``dlbench``; the modules that define them stay importable
too (``dlbench.stacking.StackedOptimizer``), so plugins written against them keep loading.
``import dlbench`` itself stays light (pluggy only): a name is loaded from its module, and torch
with it, the first time it is asked for.
"""

from importlib import import_module

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("dlbench")

# public name -> the module that defines it
_PUBLIC = {
    # options' domains: ``lr: Annotated[float, Range(gt=0)] = 0.01``
    "Range": "dlbench.schema",
    "Length": "dlbench.schema",
    # architectures: the input ranks one reads, the slots regularizers fill
    "accepts": "dlbench.shapes",
    "Slot": "dlbench.slots",
    # stacked training: a component that trains N trials at once, a stacked optimizer's base
    "stackable": "dlbench.stacking",
    "StackedOptimizer": "dlbench.stacking",
    # regularizers
    "Regularizer": "dlbench.regularizer",
    "StackedRegularizer": "dlbench.regularizer",
    "weights": "dlbench.regularizer",
    "stacked_weights": "dlbench.regularizer",
    # preprocessing steps and datasets
    "Preprocessor": "dlbench.preprocessing",
    "Dataset": "dlbench.data",
    "DeviceData": "dlbench.data",
    # what hooks receive: a trial, what it trains with (a stack member's stack) and its result
    "Trial": "dlbench.trial",
    "TrialResult": "dlbench.trial",
    "TrialInfo": "dlbench.trial",
    "StackInfo": "dlbench.trial",
    # a study run's results as pandas DataFrames (docs/results.md): trials, per-epoch curves, both
    "load_trials": "dlbench.results",
    "load_curves": "dlbench.results",
    "load_results": "dlbench.results",
    "Results": "dlbench.results",
}

__all__ = ["hookimpl", "__version__", *_PUBLIC]


def __getattr__(name: str):
    """``from dlbench import StackedOptimizer`` loads ``dlbench.stacking`` (and torch) then, not
    at ``import dlbench``."""
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'dlbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
