"""Preprocessing steps: statistics fitted on the training split only, then applied to every split.

A study file lists them in order, like regularizers::

    preprocessing = ["standardize"]
    preprocessing = [{ name = "pca", variance = 0.95 }]

Each step is a :class:`Preprocessor` made by a ``preprocessing`` plugin. It is fitted on the
training split after the validation split was carved out of it (never on validation or test
examples), on the device, and applies to the training, validation and test splits alike. A step
may change the shape of an example (PCA keeps ``k`` components: the architecture then sees
``(k,)``). ``DataCache`` fits each dataset + preprocessing once per process, not once per trial.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from dlbench.data import DeviceData


class Preprocessor:
    """One fitted transformation of the inputs. A ``preprocessing`` plugin's factory returns one.

    ``fit(x)`` gets the training inputs, ``[N, *input_shape]`` float32 on the device, and keeps
    what it needs (on the same device). ``transform(x)`` maps a batch ``[M, *input_shape]`` to
    ``[M, *output_shape]`` float32, the same function for every split; it must not depend on
    ``M`` or on the order of the examples. ``describe()`` says in a few words what was fitted
    (``pca: 12 of 40 components, 95.1% of variance``): it is recorded with every trial.
    """

    def fit(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return ""


def apply(step: Preprocessor, name: str, data: DeviceData) -> DeviceData:
    """``data`` with ``step`` fitted on its training split and applied to every split."""
    step.fit(data.x_train)
    x = {split: step.transform(getattr(data, f"x_{split}")) for split in ("train", "val", "test")}
    for split, out in x.items():
        if not isinstance(out, torch.Tensor) or out.shape[0] != getattr(data, f"x_{split}").shape[0]:
            raise TypeError(f"preprocessing {name!r}: transform must return a tensor with one row per example, "
                            f"got {type(out).__name__} {tuple(getattr(out, 'shape', ()))} for the {split} split")
    if x["train"].shape[1:] != x["test"].shape[1:]:
        raise TypeError(f"preprocessing {name!r}: transform gave the train and test splits different shapes")
    summary = step.describe()
    return replace(data, x_train=x["train"].float(), x_val=x["val"].float(), x_test=x["test"].float(),
                   input_shape=tuple(x["train"].shape[1:]),
                   preprocessing=(*data.preprocessing, f"{name}: {summary}" if summary else name))
