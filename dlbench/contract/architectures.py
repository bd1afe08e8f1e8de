"""The architecture's build check: built on every input rank it accepts, it exposes the slots
regularizers fill (probed for the tensors they see) and its ``hidden_blocks``."""

from __future__ import annotations

import torch
from torch import nn

from dlbench.build import seed_everything
from dlbench.contract.outcome import passed
from dlbench.contract.subject import CLASSES, Subject, describe, fixed_batch, input_shapes
from dlbench.slots import ROLES, Slot, slots


def architecture_builds(s: Subject) -> str | None:
    """``builds on a tiny input`` for an architecture: on the fixed batch of every input shape it
    accepts, finite logits, every slot role exposed and matching its tensor, and ``hidden_blocks``."""
    shapes = input_shapes(s.component)
    for shape in shapes:
        seed_everything(0)
        model = s.architecture(shape)
        if not isinstance(model, nn.Module):
            return f"expected a torch.nn.Module, got {type(model).__name__}"
        x, _ = fixed_batch(shape)
        problems = _probe_slots(model)
        with torch.no_grad():
            out = model.eval()(x)
        _unprobe_slots(model)
        if out.shape != (len(x), CLASSES) or not torch.isfinite(out).all():
            return f"on inputs of shape {shape}: expected finite logits of shape {(len(x), CLASSES)}, got {describe(out)}"
        missing = [role for role in ROLES if not slots(model, role)]
        if missing:
            return (f"exposes no {' or '.join(missing)} slot (dlbench.slots.Slot): dropout and normalization "
                    "need an input slot, a norm slot between each hidden layer's linear map and its activation, "
                    "a hidden slot after it")
        if problems:
            return f"on inputs of shape {shape}: {problems[0]}"
        if not isinstance(getattr(model, "hidden_blocks", None), list):
            return "has no hidden_blocks (a list of modules, one per hidden layer) for layer-wise initializers"
    return passed(f"inputs of shape {', '.join(map(str, shapes))}")


class _SlotProbe(nn.Module):
    """Records where a slot's declared features/spatial_dims disagree with the tensor it sees."""

    def __init__(self, slot: Slot, problems: list[str]):
        super().__init__()
        self.slot, self.problems = [slot], problems  # a list: not a submodule (no recursion)

    def forward(self, x):
        slot = self.slot[0]
        if slot.features is not None and (x.dim() < 2 or x.shape[1] != slot.features
                                          or x.dim() - 2 != slot.spatial_dims):
            self.problems.append(f"a {slot.role!r} slot declares features={slot.features}, "
                                 f"spatial_dims={slot.spatial_dims} but sees a tensor of shape {tuple(x.shape)}")
        return x


def _probe_slots(model: nn.Module) -> list[str]:
    problems: list[str] = []
    for slot in (m for m in model.modules() if isinstance(m, Slot)):
        slot.fill(_SlotProbe(slot, problems))
    return problems


def _unprobe_slots(model: nn.Module) -> None:
    for slot in (m for m in model.modules() if isinstance(m, Slot)):
        slot.inner = nn.Identity()
