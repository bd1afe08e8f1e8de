"""The tiny world a component is checked in: the fixed batch, the tiny model built around the
component (:class:`Subject`), its short training run (:class:`Trajectory`), and the training
step and messages the checks share."""

from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from dlbench.build import seed_everything
from dlbench.data import Dataset, DeviceData
from dlbench.shapes import accepted_ranks
from dlbench.train import training_loss, update

BATCH = 32  # examples of the fixed batch
CLASSES = 4
STEPS = 3  # optimizer steps of a trajectory
REFERENCE_LR = 1e-3  # of the Adam that trains the tiny model when the optimizer is not the one checked
TOTAL_STEPS = 10  # what a schedule is told training lasts
WIDTH = 32  # of the tiny MLP (a multiple of group normalization's default 32 groups)
ONE_D, IMAGE, COLOUR = (40,), (8, 8), (3, 8, 8)  # tiny inputs of each rank (MNIST-1D's length)
SETTINGS = [("mlp", ONE_D), ("mlp", IMAGE)]  # (architecture, input shape) a component may be checked in


def fixed_batch(shape: tuple[int, ...], n: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples of ``shape`` (images in [0, 1], anything else standard normal) and random
    labels of :data:`CLASSES` classes, the same every time (unbalanced, so that even a model whose
    weights cannot learn lowers the loss by its biases)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=g) if len(shape) > 1 else torch.randn(n, *shape, generator=g)
    return x, torch.randint(0, CLASSES, (n,), generator=g)


def tiny_data(shape: tuple[int, ...]) -> DeviceData:
    """The fixed batch as a trial's data (for initializers that look at the training split)."""
    x, y = fixed_batch(shape, 2 * BATCH)
    return DeviceData(x_train=x[:BATCH], y_train=y[:BATCH], x_val=x[BATCH:BATCH + 8], y_val=y[BATCH:BATCH + 8],
                      x_test=x[BATCH + 8:], y_test=y[BATCH + 8:], num_classes=CLASSES, input_shape=shape,
                      content_hash="contract")


def input_shapes(component) -> list[tuple[int, ...]]:
    """The tiny input shapes an architecture is checked on: one for each input rank it declares
    it accepts (``@dlbench.shapes.accepts(ranks=...)``), every rank when it declares none."""
    return [{1: ONE_D, 2: IMAGE, 3: COLOUR}[r] for r in accepted_ranks(component.factory) or (1, 2, 3)]


@dataclass
class Trajectory:
    """A tiny model built from one seed and trained :data:`STEPS` steps on the fixed batch."""

    loss_before: float
    loss_after: float
    state: dict[str, torch.Tensor]
    eval_outputs: tuple[torch.Tensor, torch.Tensor]
    lrs: list[float]
    custom_functions: list[str] = field(default_factory=list)  # custom autograd Functions seen


class Subject:
    """The component under check, its options, and the tiny models built around it (cached)."""

    def __init__(self, component, registry, options: dict):
        self.component, self.registry, self.options = component, registry, options
        self.kind = component.kind
        self.label = f"{component.kind}:{component.name}"
        self.stacked_step = None  # (the stacked optimizer or regularizer, its Python state a step before) once stepped

    def make(self, *args):
        return self.component.factory(*args, **self.options)

    # the tiny model and its training parts, the component in its place
    def architecture(self, shape, activation=None) -> nn.Module:
        activation = activation or (self.make if self.kind == "activation" else nn.ReLU)
        if self.kind == "architecture":
            return self.make(shape, CLASSES, activation)
        mlp = self.registry.get("architecture", "mlp").factory
        return mlp(shape, CLASSES, activation, depth=2, width=WIDTH)

    def parts(self, seed: int, setting=None):
        """(model, regularizers, optimizer, schedule, (x, y)) built from ``seed`` as ``train.build`` does."""
        _, shape = setting or self.setting
        seed_everything(seed)
        model = self.architecture(shape)
        regularizers = [self.make()] if self.kind == "regularizer" else []
        for reg in regularizers:
            model = reg.wrap_model(model)
        if self.kind == "initializer":
            self.make(model, tiny_data(shape))
        optimizer = self.make(model.parameters()) if self.kind == "optimizer" else \
            torch.optim.Adam(model.parameters(), lr=REFERENCE_LR)
        schedule = self.make(optimizer, TOTAL_STEPS) if self.kind == "schedule" else None
        return model, regularizers, optimizer, schedule, fixed_batch(shape)

    @cached_property
    def setting(self) -> tuple[str, tuple[int, ...]]:
        """The first of :data:`SETTINGS` the component builds and steps in (an architecture: its
        first declared input shape); its first error when there is none."""
        if self.kind == "architecture":
            return self.component.name, input_shapes(self.component)[0]
        first = None
        for setting in SETTINGS:
            try:
                parts = self.parts(0, setting)
                train_step(*parts)
                return setting
            except Exception as exc:
                first = first or exc
        raise first

    def trajectory(self, seed: int = 0) -> Trajectory:
        model, regs, optimizer, schedule, (x, y) = self.parts(seed)
        graph = _custom_functions(_objective(model, regs, x, y, seed=1))
        before = _measure(model, regs, x, y)
        lrs = []
        for _ in range(STEPS):
            train_step(model, regs, optimizer, schedule, (x, y))
            lrs.append(optimizer.param_groups[0]["lr"])
        after = _measure(model, regs, x, y)
        model.eval()
        with torch.no_grad():
            outputs = model(x), model(x)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return Trajectory(before, after, state, outputs, lrs, graph)

    @cached_property
    def first(self) -> Trajectory:
        return self.trajectory(0)

    @cached_property
    def dataset(self) -> Dataset:
        return self.make()

    def raised(self, exc: Exception) -> str:
        """``raised ValueError: message (at plugins/x.py:12)``: the plugin's own line when it is in
        the traceback, else the innermost one."""
        frames = traceback.extract_tb(exc.__traceback__)
        source = _source_file(self.component.factory)
        own = [f for f in frames if f.filename == source] or frames[-1:]
        where = f" (at {own[-1].filename}:{own[-1].lineno})" if own else ""
        text = str(exc).strip().replace("\n", " ") or "(no message)"
        return f"raised {type(exc).__name__}: {text}{where}"


def _source_file(factory) -> str | None:
    try:
        return inspect.getsourcefile(inspect.unwrap(factory))
    except (TypeError, OSError):
        return None


def _objective(model, regularizers, x, y, seed: int | None = None) -> torch.Tensor:
    """The training loss as ``train.train_epoch`` computes it (train mode), the random draws
    fixed by ``seed`` when given."""
    if seed is not None:
        torch.manual_seed(seed)
    model.train()
    return training_loss(model, regularizers, x, y)


def _measure(model, regularizers, x, y) -> float:
    with torch.no_grad():
        return _objective(model, regularizers, x, y, seed=1).item()


def train_step(model, regularizers, optimizer, schedule, batch) -> None:
    """One training step as ``train.train_epoch`` takes it."""
    loss = _objective(model, regularizers, *batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    update(model, regularizers, optimizer, schedule)


def _custom_functions(output: torch.Tensor) -> list[str]:
    """The custom ``torch.autograd.Function``s in the autograd graph of ``output``."""
    found, seen, todo = [], set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.append(type(node).__name__.removesuffix("Backward"))
        todo.extend(next_node for next_node, _ in node.next_functions)
    return sorted(set(found))


def first_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> str | None:
    """The failure message for the first tensor of ``a`` that differs from ``b``'s; None when all are equal."""
    for key in a:
        if not torch.equal(a[key], b[key]):
            diff = (a[key].double() - b[key].double()).abs().max().item() if a[key].shape == b[key].shape else "shape"
            return f"{what} {key!r} differs (largest difference {diff})"
    return None


def describe(out) -> str:
    """What a forward pass gave, for a failure message: ``finite values of shape (32, 4)``."""
    if not isinstance(out, torch.Tensor):
        return type(out).__name__
    finite = "finite" if torch.isfinite(out).all() else "non-finite"
    return f"{finite} values of shape {tuple(out.shape)}"
