"""The regularizer's own check: a ``dlbench.regularizer.Regularizer`` whose state survives a
checkpoint."""

from __future__ import annotations

import io

import torch

from dlbench.contract.subject import Subject, train_step
from dlbench.regularizer import Regularizer


def regularizer_type(s: Subject) -> str | None:
    """is a dlbench.regularizer.Regularizer whose state survives a checkpoint"""
    reg = s.make()
    if not isinstance(reg, Regularizer):
        return f"expected a dlbench.regularizer.Regularizer, got {type(reg).__name__}"
    model, (trained,), optimizer, _, batch = s.parts(0)
    train_step(model, [trained], optimizer, None, batch)
    trained.should_stop(1, {"train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5, "train_accuracy": 0.5})
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)  # as a checkpoint writes it
    buffer.seek(0)
    fresh = s.make()
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    if repr(fresh.state_dict()) != repr(trained.state_dict()):
        return "a fresh instance loaded with its state_dict has another state_dict"
    return None
