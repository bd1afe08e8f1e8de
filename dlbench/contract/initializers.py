"""The initializer's own check: it changes the model in place, keeping its parameters' names and
shapes, all finite."""

from __future__ import annotations

import torch

from dlbench.build import seed_everything
from dlbench.contract.subject import Subject, tiny_data


def initializer_keeps_the_model(s: Subject) -> str | None:
    """initializes the model in place, keeping its parameters' names and shapes, all finite"""
    _, shape = s.setting
    seed_everything(0)
    model = s.architecture(shape)
    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    result = s.make(model, tiny_data(shape))
    if result is not None and result is not model:
        return f"returned {type(result).__name__}: an initializer changes the model in place and returns None"
    after = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if after != before:
        return f"the model's parameters changed names or shapes: {before} -> {after}"
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    return f"{bad[0]!r} is not finite after initialization" if bad else None
