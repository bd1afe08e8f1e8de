"""Slots: named places in an architecture where a regularizer may insert a module.

An architecture puts ``Slot("input")`` before its first layer, ``Slot("norm", features=...)``
between each hidden layer's linear map (or convolution) and its activation, and
``Slot("hidden", features=...)`` after each hidden activation. A slot is the identity until a
regularizer fills it (dropout the input and hidden slots, batch/layer/group normalization the
norm slots), so the architecture never needs to know which regularizers exist.

``features`` is the size of the feature (or channel) axis at the slot and ``spatial_dims`` the
number of axes after it (0 for an MLP's [B, F], 1 for a 1-D convolution's [B, C, L], 2 for
[B, C, H, W]): what a normalization layer needs to be built. A recurrent network's per-step
slots see [B, F] (``spatial_dims`` 0).

Slots and ``hidden_blocks`` are optional capabilities of an architecture: a plain PyTorch model
with neither trains in any study that does not use a component needing them. A component that
needs one asks for it through :func:`slots` and :func:`hidden_blocks`; inside :func:`asking`
(the preflight) every such question and how much it found is recorded, so that a study pairing
such a component with an architecture that lacks the capability is refused before it trains,
naming both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

ROLES = ("input", "norm", "hidden")


class Slot(nn.Module):
    """An identity placeholder of a given ``role``, fillable by regularizers (filled twice, the
    modules run in the order they were given)."""

    def __init__(self, role: str, features: int | None = None, spatial_dims: int = 0):
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"unknown slot role {role!r}: one of {', '.join(ROLES)}")
        self.role, self.features, self.spatial_dims = role, features, spatial_dims
        self.inner: nn.Module = nn.Identity()

    def fill(self, module: nn.Module) -> None:
        self.inner = module if isinstance(self.inner, nn.Identity) else nn.Sequential(self.inner, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def extra_repr(self) -> str:
        shape = f", features={self.features}, spatial_dims={self.spatial_dims}" if self.features else ""
        return f"role={self.role!r}{shape}"


def slots(model: nn.Module, role: str) -> list[Slot]:
    """Every slot of ``role`` in ``model``, in forward order."""
    found = [m for m in model.modules() if isinstance(m, Slot) and m.role == role]
    _record(f"{role} slots", len(found))
    return found


def hidden_blocks(model: nn.Module) -> list[nn.Module] | None:
    """``model.hidden_blocks`` as a list (any sequence of modules counts: a list, a tuple, an
    ``nn.ModuleList``, an ``nn.Sequential``); None when the model exposes none. What layer-wise
    initializers (greedy pretraining) and DropConnect read: the hidden layers in order, the first
    taking the input batch as the model receives it, each mapping one hidden representation to the
    next."""
    blocks = getattr(model, "hidden_blocks", None)
    found = None if blocks is None else as_blocks(blocks, type(model).__name__)
    _record("hidden_blocks", len(found or ()))
    return found


def as_blocks(blocks, owner: str) -> list[nn.Module]:
    """``blocks`` as a list of modules; a TypeError saying what a ``hidden_blocks`` must be otherwise."""
    what = ("must be a sequence of modules, one per hidden layer (a list, a tuple, an nn.ModuleList or an "
            f"nn.Sequential), got {type(blocks).__name__}")
    if isinstance(blocks, (str, bytes, dict, nn.ModuleDict)) or not hasattr(blocks, "__iter__"):
        raise TypeError(f"{owner}.hidden_blocks {what}")
    found = list(blocks)
    bad = [type(b).__name__ for b in found if not isinstance(b, nn.Module)]
    if bad:
        raise TypeError(f"{owner}.hidden_blocks {what} holding a {bad[0]}")
    return found


_asked: ContextVar[list[tuple[str, int]] | None] = ContextVar("dlbench_asked", default=None)


@contextmanager
def asking() -> Iterator[list[tuple[str, int]]]:
    """Record, inside, every capability asked of a model (``("hidden slots", 2)``,
    ``("hidden_blocks", 0)``: what was asked, how many were found); a nested ``asking`` records
    its own questions, not its parent's."""
    asked: list[tuple[str, int]] = []
    token = _asked.set(asked)
    try:
        yield asked
    finally:
        _asked.reset(token)


def lacking(asked: list[tuple[str, int]]) -> list[str]:
    """The capabilities asked for when none of them was found (all of them came back empty: a
    component that found nothing to act on), else ``[]``."""
    if not asked or any(n for _, n in asked):
        return []
    return list(dict.fromkeys(capability for capability, _ in asked))


def _record(capability: str, found: int) -> None:
    asked = _asked.get()
    if asked is not None:
        asked.append((capability, found))
