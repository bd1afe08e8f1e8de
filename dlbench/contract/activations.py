"""The activation's own check: a fresh module per call that keeps the input's shape."""

from __future__ import annotations

import torch
from torch import nn

from dlbench.contract.subject import Subject, describe


def fresh_module_per_call(s: Subject) -> str | None:
    """returns a fresh module per call that keeps the input's shape"""
    module = s.make()
    if not isinstance(module, nn.Module):
        return f"expected a torch.nn.Module, got {type(module).__name__}"
    if s.make() is module:
        return "two calls returned the same module: every layer of an architecture needs its own"
    for shape in [(3, 5), (3, 4, 6), (3, 4, 5, 5)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        out = module.eval()(x)
        if out.shape != x.shape or not torch.isfinite(out).all():
            return f"on an input of shape {shape}: expected finite values of the same shape, got {describe(out)}"
    return None
