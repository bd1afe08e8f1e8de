"""The checks of a preprocessing step: fitted on the training split, it transforms every split,
each example alone and the same way every time."""

from __future__ import annotations

import torch

from dlbench.contract.outcome import passed
from dlbench.contract.subject import COLOUR, IMAGE, ONE_D, Subject, tiny_data
from dlbench.preprocessing import Preprocessor, apply


def _fitted(s: Subject, shape):
    """The step fitted on a tiny training split of ``shape`` by ``preprocessing.apply``, as a trial
    fits it, and the data it gave."""
    step = s.make()
    return step, apply(step, s.component.name, tiny_data(shape))


def preprocessing_applies(s: Subject) -> str | None:
    """is fitted on the training split and transforms every split"""
    if not isinstance(s.make(), Preprocessor):
        return f"expected a dlbench.preprocessing.Preprocessor, got {type(s.make()).__name__}"
    shapes = []
    for shape in (ONE_D, IMAGE, COLOUR):
        _, data = _fitted(s, shape)
        for split, (x, _) in data.splits().items():
            if not torch.isfinite(x).all():
                return f"on inputs of shape {shape}: the {split} split is not finite after it"
        shapes.append(f"{shape} -> {data.input_shape}")
    return passed(", ".join(shapes))


def preprocessing_is_a_function(s: Subject) -> str | None:
    """transforms each example alone, the same way every time"""
    for shape in (ONE_D, COLOUR):
        step, data = _fitted(s, shape)
        x = tiny_data(shape).x_test
        whole = step.transform(x)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
        if not _same_up_to_rounding(step.transform(x[order]), whole[order]):
            return f"on inputs of shape {shape}: the result of an example depends on the order of the batch"
        if not _same_up_to_rounding(step.transform(x[:3]), whole[:3]):
            return f"on inputs of shape {shape}: the result of an example depends on the size of the batch"
        if not torch.equal(step.transform(x), whole):
            return f"on inputs of shape {shape}: transforming the same batch twice gives different results"
        again, data_again = _fitted(s, shape)
        if not torch.equal(data.x_train, data_again.x_train):
            return f"on inputs of shape {shape}: fitted twice on the same training split, it transforms differently"
    return None


def _same_up_to_rounding(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding relative to the largest value (a whitening's outputs reach
    hundreds, and a matrix product's rounding depends on the batch size)."""
    return a.shape == b.shape and (a - b).abs().max().item() <= 1e-5 * (1 + b.abs().max().item())
