"""The checks of a dataset: it builds, its arrays are float inputs and integer labels in range
with matching splits, and it gives the same content hash when built twice."""

from __future__ import annotations

import numpy as np

from dlbench.contract.outcome import passed
from dlbench.contract.subject import Subject
from dlbench.data import Dataset


def dataset_builds(s: Subject) -> str | None:
    """builds with the given options"""
    ds = s.dataset
    if not isinstance(ds, Dataset):
        return f"expected a dlbench.data.Dataset, got {type(ds).__name__}"
    return passed(f"{len(ds.y_train)} train and {len(ds.y_test)} test examples of shape {ds.input_shape}, "
                  f"{ds.num_classes} classes")


def dataset_arrays(s: Subject) -> str | None:
    """has float inputs, integer labels in range and matching splits"""
    ds = s.dataset
    if not (isinstance(ds.num_classes, int) and ds.num_classes >= 2):
        return f"num_classes is {ds.num_classes!r} (expected an int >= 2)"
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            return f"x_{split} and y_{split} must be numpy arrays, got {type(x).__name__} and {type(y).__name__}"
        if len(x) == 0 or len(x) != len(y) or y.ndim != 1:
            return f"x_{split} has {len(x)} examples and y_{split} shape {y.shape} (expected as many labels, one each)"
        if x.dtype.kind != "f" or not np.isfinite(x).all():
            return f"x_{split} must hold finite floats, got dtype {x.dtype}"
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= ds.num_classes:
            return f"y_{split} must hold integer class ids in [0, {ds.num_classes}), got dtype {y.dtype}, " \
                   f"range {y.min()}..{y.max()}"
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        return f"train examples have shape {ds.x_train.shape[1:]}, test examples {ds.x_test.shape[1:]}"
    return None


def dataset_hash(s: Subject) -> str | None:
    """gives the same content hash when built twice"""
    first, second = s.dataset.content_hash(), s.make().content_hash()
    if first != second:
        return f"built twice with the same options, the content hashes differ ({first[:12]} and {second[:12]})"
    return passed(f"sha256 {first[:12]}")
