"""The checks of a loss: per-example losses of the logits, that depend on the labels and pass a
gradient to the logits, each example's alone (a stack flattens its members' batches into one)."""

from __future__ import annotations

import torch

from dlbench.contract.subject import BATCH, CLASSES, Subject, describe


def _batch(n: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[n, CLASSES]`` and labels ``[n]``, the same every time."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, CLASSES, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def loss_per_example(s: Subject) -> str | None:
    """returns finite per-example losses [B] that depend on the labels and pass a gradient to the logits"""
    loss = s.make(CLASSES)
    if not callable(loss):
        return f"expected a callable loss(logits, y), got {type(loss).__name__}"
    logits, y = _batch()
    logits.requires_grad_()
    out = loss(logits, y)
    if not isinstance(out, torch.Tensor) or out.shape != (BATCH,) or not torch.isfinite(out).all():
        return f"on logits of shape {(BATCH, CLASSES)}: expected finite values of shape ({BATCH},), got {describe(out)}"
    with torch.no_grad():
        other = loss(logits, (y + 1) % CLASSES)
    if torch.equal(out.detach(), other):
        return "the losses do not depend on the labels"
    out.sum().backward()
    if logits.grad is None or not torch.isfinite(logits.grad).all() or not logits.grad.abs().sum() > 0:
        return f"no finite, non-zero gradient reaches the logits (got {describe(logits.grad)})"
    return None


def loss_is_per_example(s: Subject) -> str | None:
    """gives each example its loss alone, whatever the rest of the batch"""
    loss = s.make(CLASSES)
    logits, y = _batch()
    with torch.no_grad():
        whole = loss(logits, y)
        order = torch.randperm(BATCH, generator=torch.Generator().manual_seed(3))
        if not torch.allclose(loss(logits[order], y[order]), whole[order], rtol=1e-5, atol=1e-6):
            return "the loss of an example depends on the order of the batch"
        if not torch.allclose(loss(logits[:3], y[:3]), whole[:3], rtol=1e-5, atol=1e-6):
            return "the loss of an example depends on the size of the batch"
    return None
