"""docs/plugins.md's example plugin blobs.py as it stood before the reshape (commit 8934433),
verbatim: it imports from the module paths of that time."""
from typing import Annotated

import numpy as np

from dlbench import Range, hookimpl
from dlbench.data import Dataset


def blobs(*, classes: Annotated[int, Range(ge=2)] = 3, per_class: Annotated[int, Range(ge=2)] = 50,
          spread: Annotated[float, Range(gt=0)] = 1.0, seed: Annotated[int, Range(ge=0)] = 0) -> Dataset:
    """Gaussian blobs in 2-D (a scikit-learn classic): one cluster of per_class points per class.

    classes (>= 2, default 3); per_class (>= 2, default 50) points each; spread (> 0, default 1.0)
    the standard deviation around centres 5 apart; seed fixes the points. A quarter is the test split.
    """
    rng = np.random.default_rng(seed)
    centres = 5.0 * rng.normal(size=(classes, 2))
    y = np.repeat(np.arange(classes), per_class)
    x = (centres[y] + spread * rng.normal(size=(len(y), 2))).astype(np.float32)
    order = rng.permutation(len(y))
    test = order[: len(y) // 4]
    train = order[len(y) // 4:]
    return Dataset("blobs", x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64), classes)


@hookimpl
def dlbench_register_datasets(register):
    register("blobs", blobs)
