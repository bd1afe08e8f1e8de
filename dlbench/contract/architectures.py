"""The architecture's checks: what it needs (built on every input rank it accepts, finite logits of
the right shape) and the optional capabilities it may offer, each reported as supported (and
verified) or not supported: the slots regularizers fill (probed for the tensors they see) and its
``hidden_blocks``, which layer-wise initializers read."""

from __future__ import annotations

import torch
from torch import nn

from dlbench.build import seed_everything
from dlbench.contract.outcome import Unsupported, passed
from dlbench.contract.subject import CLASSES, Subject, describe, fixed_batch, input_shapes
from dlbench.slots import ROLES, Slot, as_blocks, slots

# what each slot role is for: the study features an architecture without it cannot have
SLOT_USERS = {"input": "input dropout", "norm": "batch_norm, layer_norm, group_norm",
              "hidden": "dropout, dropout_test_scaling, mc_dropout on hidden units"}


def architecture_builds(s: Subject) -> str | None:
    """``builds on a tiny input`` for an architecture: a ``torch.nn.Module`` giving finite logits
    of shape [B, classes] on the fixed batch of every input shape it accepts."""
    shapes = input_shapes(s.component)
    for shape in shapes:
        model, x = _built(s, shape)
        if not isinstance(model, nn.Module):
            return f"expected a torch.nn.Module, got {type(model).__name__}"
        with torch.no_grad():
            out = model.eval()(x)
        if out.shape != (len(x), CLASSES) or not torch.isfinite(out).all():
            return f"on inputs of shape {shape}: expected finite logits of shape {(len(x), CLASSES)}, got {describe(out)}"
    return passed(f"inputs of shape {', '.join(map(str, shapes))}")


def exposes_slots(s: Subject) -> str | None:
    """exposes slots for dropout and normalization (optional)"""
    shapes, found = input_shapes(s.component), {}
    for shape in shapes:
        model, x = _built(s, shape)
        found = {role: len(slots(model, role)) for role in ROLES}
        problems = _probe_slots(model)
        with torch.no_grad():
            model.eval()(x)
        _unprobe_slots(model)
        if problems:
            return f"on inputs of shape {shape}: {problems[0]}"
    if not any(found.values()):
        raise Unsupported("no dlbench.Slot in the model: regularizers that fill slots (dropout and its variants, "
                          "batch_norm, layer_norm, group_norm) cannot be used with it; everything else can")
    missing = [role for role in ROLES if not found[role]]
    note = ", ".join(f"{found[r]} {r}" for r in ROLES if found[r])
    if missing:
        note += "; no " + " or ".join(missing) + " slot (so not " + "; not ".join(SLOT_USERS[r] for r in missing) + ")"
    return passed(note)


def exposes_hidden_blocks(s: Subject) -> str | None:
    """exposes hidden_blocks for layer-wise initializers (optional)"""
    shapes = input_shapes(s.component)
    for shape in shapes:
        model, x = _built(s, shape)
        blocks = getattr(model, "hidden_blocks", None)
        if blocks is None:
            raise Unsupported("no hidden_blocks: layer-wise initializers (greedy_autoencoder, greedy_rbm) and "
                              "dropconnect cannot be used with it; everything else can")
        try:
            blocks = as_blocks(blocks, type(model).__name__)
        except TypeError as exc:
            return str(exc)
        if not blocks:
            return "hidden_blocks is empty: give one module per hidden layer, or expose none"
        h = x
        with torch.no_grad():
            model.eval()
            for i, block in enumerate(blocks):
                try:
                    h = block(h)
                except Exception as exc:
                    return (f"on inputs of shape {shape}: hidden block {i} ({type(block).__name__}) does not take "
                            f"{'the input batch' if i == 0 else f'the output of block {i - 1}'} of shape "
                            f"{tuple(h.shape)}: raised {type(exc).__name__}: {str(exc).strip().splitlines()[0]} "
                            "(the first block takes the batch as the model receives it, each the previous one's output)")
    return passed(f"{len(blocks)} block{'s' if len(blocks) != 1 else ''}, each feeding the next")


def _built(s: Subject, shape) -> tuple[nn.Module, torch.Tensor]:
    seed_everything(0)
    x, _ = fixed_batch(shape)
    return s.architecture(shape), x


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
