"""The plugin contract: what every registered component of every kind does, checked in a fraction
of a second on tiny inputs (as timm tests every registered model). ``dlbench plugins check`` runs
it on any component, ``tests/test_contract.py`` on every registered one.

Every component except a dataset is checked inside a tiny model: an MLP of width 32 (the
architecture itself when an architecture is checked) on a fixed batch of 32 random examples of
4 random classes, trained by Adam (lr 0.001, its usual default) unless the component is the optimizer. Its checks:

* **builds on a tiny input**: the model maps the batch to finite logits of shape [32, 4]. An
  architecture is built for every input shape it declares it accepts (see :func:`input_shapes`)
  and must expose the slots regularizers fill (``input``, ``norm``, ``hidden``; each ``norm``
  and ``hidden`` slot's ``features``/``spatial_dims`` matching the tensor it sees) and
  ``hidden_blocks``. A regularizer (or initializer) is checked in the first tiny setting it
  builds and steps in (:data:`SETTINGS`: an MLP on 1-D signals, then on 8x8 images).
* **a few optimizer steps lower the loss on a fixed batch**: the training objective (cross-entropy
  plus penalties, in train mode, the same random draws before and after) is lower after
  :data:`STEPS` steps. The loss is that of the whole tiny model, so a negative control that
  blocks the gradient by design (the ``step`` activation, a ``zeros`` initializer) passes through
  the parameters that still learn (the output layer, the biases); its gradcheck then says that no
  gradient flows through it.
* **the same seed gives identical parameters and outputs**: built and trained twice from one
  seed, every parameter and buffer and the eval-mode outputs are bit-identical.
* **eval mode is deterministic**: two eval-mode forward passes of the trained model are equal.
* **custom autograd passes a float64 gradcheck**: an activation always (the module alone, with its
  parameters); any other component when the autograd graph of the loss holds a custom
  ``torch.autograd.Function`` (``torch.autograd.gradcheck``, fast mode, in float64, with respect
  to the input and the parameters, the random draws replayed for every evaluation).
* **a stacked step equals the members' own steps**, for a component that declares it stacks
  (see ``dlbench/stacking.py``): two members' outputs and gradients under ``vmap`` (architecture,
  activation), their parameters after three stacked updates (optimizer), the learning rate as a
  function of the step alone (schedule), the stacked penalty, gradient and parameter updates
  (regularizer), two members' parameters and random streams after an initializer's stacked form
  (initializer), each against the members trained (or initialized) one at a time. A stacked optimizer or
  regularizer that declares ``graph_safe = True`` must also leave its Python state (every value
  that is not a tensor, and which tensor objects it holds) as it was from one step to the next:
  a CUDA graph's replay runs only the kernels of the step it captured.

Kind-specific checks: an activation returns a fresh module per call and keeps the shape of
[B, F], [B, C, L] and [B, C, H, W] inputs; an optimizer resumes from its ``state_dict`` exactly;
a schedule keeps the learning rate finite and >= 0 and resumes from its ``state_dict``; a
regularizer's state survives a checkpoint (``torch.save``); an initializer keeps the model's
parameter names and shapes and leaves them finite; a dataset returns a ``dlbench.data.Dataset``
with float inputs, integer labels in [0, num_classes), matching split lengths and example shapes,
and the same content hash when built twice (a dataset that needs files is checked with the
options its author gives: ``--option path=...``).

Each check returns an :class:`Outcome`: passed, failed with a message saying what was expected and
what came instead (an exception names the plugin's line it came from), or skipped with the
reason (not applicable, or not run because the component does not build).
"""

from __future__ import annotations

import copy
import inspect
import io
import math
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from dlbench.data import Dataset, DeviceData
from dlbench.errors import UserError
from dlbench.preflight import untouched_global_state
from dlbench.regularizer import Regularizer
from dlbench.schema import check as check_value, coerce
from dlbench.shapes import accepted_ranks
from dlbench.slots import ROLES, Slot, slots
from dlbench.stacking import STACKED, MemberStreams, component_stacks, stacked_initializer, stacked_module
from dlbench.train import rng_state, seed_everything, training_loss, update

BATCH = 32  # examples of the fixed batch
CLASSES = 4
STEPS = 3  # optimizer steps of a trajectory
REFERENCE_LR = 1e-3  # of the Adam that trains the tiny model when the optimizer is not the one checked
TOTAL_STEPS = 10  # what a schedule is told training lasts
WIDTH = 32  # of the tiny MLP (a multiple of group normalization's default 32 groups)
ONE_D, IMAGE, COLOUR = (40,), (8, 8), (3, 8, 8)  # tiny inputs of each rank (MNIST-1D's length)
SETTINGS = [("mlp", ONE_D), ("mlp", IMAGE)]  # (architecture, input shape) a component may be checked in
STACK_RTOL, STACK_ATOL = 1e-4, 1e-5  # vmap's batched kernels round differently from single ones
PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Outcome:
    """One check of one component: ``status`` pass, fail or skip, and what the check found."""

    component: str  # kind:name
    check: str
    status: str
    message: str = ""

    def __str__(self) -> str:
        return f"{self.status.upper():<4}  {self.component}  {self.check}" + (f": {self.message}" if self.message else "")


class Skip(Exception):
    """A check that does not apply to this component (the message says why)."""


def check(component, registry, options: dict | None = None) -> list[Outcome]:
    """Run the contract of ``component``'s kind on it, with ``options`` over its defaults.

    Raises :class:`UserError` for options that do not fit the component or required options
    not given; everything the component itself does wrong is a failed :class:`Outcome`.
    """
    checks = CHECKS.get(component.kind)
    if checks is None:
        raise UserError(f"dlbench has no contract for the {component.kind} kind yet")
    subject = Subject(component, registry, resolve_options(component, options or {}))
    outcomes: list[Outcome] = []
    with untouched_global_state(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a schedule stepped without optimizer steps, on purpose
        for fn in checks:
            name = inspect.getdoc(fn).splitlines()[0]
            if outcomes and outcomes[0].status == FAIL:
                outcomes.append(Outcome(subject.label, name, SKIP, "not run: it does not build"))
                continue
            outcomes.append(_run(fn, subject, name))
    return outcomes


def resolve_options(component, given: dict) -> dict:
    """The defaults with ``given`` over them, each given value checked against the option's type
    and domain (``--option lr: must be > 0, got -1.0``)."""
    problems = []
    for key, value in given.items():
        option = component.options.get(key)
        if option is None:
            problems.append(f"--option {key}: {component.kind} {component.name!r} has no option {key!r}; "
                            f"its options: {', '.join(component.options) or 'none'}")
        elif problem := check_value(value, option.annotation, f"--option {key}"):
            problems.append(problem)
    missing = [o.name for o in component.options.values() if o.required and o.name not in given]
    if missing:
        problems.append(f"{component.kind} {component.name!r} requires option{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}: give {' '.join(f'--option {m}=...' for m in missing)}")
    if problems:
        raise UserError("; ".join(problems))
    defaults = {o.name: o.default for o in component.options.values() if not o.required}
    return defaults | {k: coerce(v, component.options[k].annotation) for k, v in given.items()}


def _run(fn, subject: Subject, name: str) -> Outcome:
    try:
        message = fn(subject)
    except Skip as why:
        return Outcome(subject.label, name, SKIP, str(why))
    except UserError as exc:
        if subject.kind == "dataset":  # its files are missing or unreadable: the user's to fix (exit 2)
            raise
        return Outcome(subject.label, name, FAIL, subject.raised(exc))
    except Exception as exc:
        return Outcome(subject.label, name, FAIL, subject.raised(exc))
    return Outcome(subject.label, name, PASS if message is None or isinstance(message, Note) else FAIL,
                   message or "")


class Note(str):
    """What a passing check found (a check returns a plain ``str`` only to fail)."""


def passed(note: str) -> Note:
    return Note(note)


# -- the tiny world -----------------------------------------------------------------------------


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
                _step(*parts)
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
            _step(model, regs, optimizer, schedule, (x, y))
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


def _step(model, regularizers, optimizer, schedule, batch) -> None:
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


def _first_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> str | None:
    for key in a:
        if not torch.equal(a[key], b[key]):
            diff = (a[key].double() - b[key].double()).abs().max().item() if a[key].shape == b[key].shape else "shape"
            return f"{what} {key!r} differs (largest difference {diff})"
    return None


# -- checks of every kind that trains -----------------------------------------------------------


def builds(s: Subject) -> str | None:
    """builds on a tiny input"""
    if s.kind == "architecture":
        return _architecture_builds(s)
    arch, shape = s.setting
    model, *_, (x, _) = s.parts(0)
    model.eval()
    with torch.no_grad():
        out = model(x)
    if out.shape != (len(x), CLASSES) or not torch.isfinite(out).all():
        return f"expected finite logits of shape {(len(x), CLASSES)}, got {_describe(out)}"
    return passed(f"in a width-{WIDTH} {arch} on inputs of shape {shape}")


def _architecture_builds(s: Subject) -> str | None:
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
            return f"on inputs of shape {shape}: expected finite logits of shape {(len(x), CLASSES)}, got {_describe(out)}"
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


def _describe(out) -> str:
    if not isinstance(out, torch.Tensor):
        return type(out).__name__
    finite = "finite" if torch.isfinite(out).all() else "non-finite"
    return f"{finite} values of shape {tuple(out.shape)}"


def lowers_the_loss(s: Subject) -> str | None:
    """a few optimizer steps lower the loss on a fixed batch"""
    t = s.first
    if not (t.loss_after < t.loss_before):
        return (f"the training loss went from {t.loss_before:.6g} to {t.loss_after:.6g} after {STEPS} steps "
                "on the same batch (expected lower)")
    return passed(f"{t.loss_before:.4g} -> {t.loss_after:.4g} in {STEPS} steps")


def same_seed_same_result(s: Subject) -> str | None:
    """the same seed gives identical parameters and outputs"""
    a, b = s.first, s.trajectory(0)
    if problem := _first_difference(a.state, b.state, "built and trained twice from seed 0,"):
        return problem
    if not torch.equal(a.eval_outputs[0], b.eval_outputs[0]):
        return "built and trained twice from seed 0, the eval-mode outputs differ"
    return None


def eval_is_deterministic(s: Subject) -> str | None:
    """eval mode is deterministic"""
    first, second = s.first.eval_outputs
    if not torch.equal(first, second):
        diff = (first - second).abs().max().item()
        return f"two eval-mode forward passes of the same batch differ (largest difference {diff:.3g})"
    return None


def gradcheck(s: Subject) -> str | None:
    """custom autograd passes a float64 gradcheck"""
    if s.kind == "activation":
        return _gradcheck_activation(s)
    functions = s.first.custom_functions
    if not functions:
        raise Skip("no custom torch.autograd.Function in the loss's autograd graph")
    model, _, _, _, (x, _) = s.parts(0)
    model = copy.deepcopy(model).double()
    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def f(x, *params):
        torch.manual_seed(1)  # the same random draws at every evaluation
        model.train()
        return functional_call(model, dict(zip(names, params)), (x,))

    inputs = (x[:4].double().requires_grad_(), *[p.detach().clone().requires_grad_()
                                                 for n, p in model.named_parameters() if n in names])
    return _gradcheck(f, inputs, f"the model with {', '.join(functions)}")


def _gradcheck_activation(s: Subject) -> str | None:
    seed_everything(0)
    module = s.make().double()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if not module(x.requires_grad_()).requires_grad:
        raise Skip("no gradient flows through it (its output does not depend differentiably on the input)")

    def f(x, *params):
        torch.manual_seed(1)
        return functional_call(module, dict(zip(names, params)), (x,))

    params = [p.detach().clone().requires_grad_() for n, p in module.named_parameters() if n in names]
    return _gradcheck(f, (x, *params), "the activation")


def _gradcheck(f, inputs, what: str) -> str | None:
    try:
        torch.autograd.gradcheck(f, inputs, fast_mode=True, raise_exception=True)
    except RuntimeError as exc:  # torch.autograd.GradcheckError
        first = str(exc).strip().splitlines()[0]
        return f"{what}: the analytical gradient disagrees with finite differences in float64 ({first})"
    return passed(f"{what}, float64")


def stacks(s: Subject) -> str | None:
    """a stacked step equals the members' own steps"""
    if s.kind == "initializer":
        if stacked_initializer(s.component) is None:
            raise Skip("it has no stacked form: the members of a stack initialize one after another")
        return _stacked_initializer(s)
    if not component_stacks(s.component):
        raise Skip("it does not declare itself stackable: trials using it train alone")
    return {"architecture": _stacked_forward, "activation": _stacked_forward, "optimizer": _stacked_optimizer,
            "schedule": _stacked_schedule, "regularizer": _stacked_regularizer}[s.kind](s)


def _stacked_initializer(s: Subject) -> str | None:
    """Two members initialized at once by the stacked form, against each initialized alone: the
    same parameters, and each member's random stream left where its own initialization leaves it
    (so its batches afterwards are those it draws alone)."""
    _, shape = s.setting
    data = tiny_data(shape)
    models, states, alone = [], [], []
    for seed in range(2):
        seed_everything(seed)
        models.append(s.architecture(shape))
        states.append(rng_state())
        seed_everything(seed)
        own = s.architecture(shape)
        s.make(own, data)
        alone.append((own, rng_state()))
    streams = MemberStreams(states)
    stacked_initializer(s.component)(models, data, streams, **s.options)
    for i, (model, state, (own, own_state)) in enumerate(zip(models, streams.states, alone)):
        for (name, p), q in zip(own.named_parameters(), model.parameters()):
            if not _close(q, p):
                return f"member {i}'s {name!r} after the stacked form differs from its own initialization " \
                       f"by {(q - p).abs().max().item():.3g}"
        if not torch.equal(state["torch"], own_state["torch"]):
            return f"member {i}'s random stream ends elsewhere than its own initialization leaves it: the " \
                   "stacked form drew other values, or another number of them (draw each member's in " \
                   "streams.member(i) or with streams.generator(i, device))"
    return passed(f"{len(models)} members, parameters and random streams")


def _members(s: Subject, n: int = 2) -> list[nn.Module]:
    models = []
    for seed in range(n):
        model, *_ = s.parts(seed)
        models.append(model)
    return models


def _vmapped(models: list[nn.Module]):
    """The members' parameters and buffers stacked, and their forward pass under ``vmap`` (one
    batch for every member)."""
    params, buffers, base, forward = stacked_module(models)
    return params, buffers, base, vmap(forward, in_dims=(0, 0, None), randomness="different")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=STACK_RTOL, atol=STACK_ATOL)


def _stacked_forward(s: Subject) -> str | None:
    models = _members(s)
    x, y = fixed_batch(s.setting[1])
    params, buffers, base, forward = _vmapped(models)
    base.eval()
    logits = forward(params, buffers, x)
    F.cross_entropy(logits.flatten(0, 1), y.repeat(len(models)), reduction="sum").backward()
    for i, model in enumerate(models):
        model.eval()
        alone = model(x)
        if not _close(logits[i], alone.detach()):
            return f"member {i}'s logits under vmap differ from its own forward pass by " \
                   f"{(logits[i] - alone).abs().max().item():.3g}"
        F.cross_entropy(alone, y, reduction="sum").backward()
        for name, p in model.named_parameters():
            if p.grad is not None and not _close(params[name].grad[i], p.grad):
                return f"member {i}'s gradient of {name!r} under vmap differs from its own"
    return passed(f"{len(models)} members, outputs and gradients")


def _stacked_optimizer(s: Subject) -> str | None:
    models = _members(s)
    x, y = fixed_batch(s.setting[1])
    params, buffers, base, forward = stacked_module(models)
    train = vmap(forward, randomness="different")  # a batch per member
    options = {k: torch.tensor([float(v)] * len(models)) if isinstance(v, (int, float)) and not isinstance(v, bool)
               else v for k, v in s.options.items()}
    stacked = getattr(s.component.factory, STACKED)(options)
    optimizers = [s.make(m.parameters()) for m in models]
    lr = torch.tensor([o.param_groups[0]["lr"] for o in optimizers])
    base.train()
    before = None
    for step in range(STEPS):
        if step == STEPS - 1:
            before = _python_state(stacked)  # past the first step, which may create the state
        logits = train(params, buffers, x.expand(len(models), *x.shape))
        losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(models)), reduction="none").view(len(models), -1)
        for p in params.values():
            p.grad = None
        losses.mean(1).sum().backward()
        stacked.step(list(params.values()), lr)
        for model, optimizer in zip(models, optimizers):
            model.train()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    for i, model in enumerate(models):
        for name, p in model.named_parameters():
            if not _close(params[name][i].detach(), p.detach()):
                diff = (params[name][i] - p).abs().max().item()
                return (f"after {STEPS} steps, member {i}'s {name!r} updated by {type(stacked).__name__} differs from "
                        f"the optimizer's own update by {diff:.3g}")
    if problem := _graph_unsafe(stacked, before):
        return problem
    return passed(f"{len(models)} members, {STEPS} steps of {type(stacked).__name__}")


def _python_state(obj, depth: int = 4) -> object:
    """What a CUDA graph's replay cannot redo: every non-tensor value reachable from ``obj``'s
    attributes (through dicts, lists, tuples and objects), and which tensor objects it holds."""
    if isinstance(obj, torch.Tensor):
        return ("tensor", id(obj))
    if depth == 0 or obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.device, torch.dtype)):
        return obj if depth else ("object", id(obj))
    if isinstance(obj, dict):
        return {repr(k): _python_state(v, depth - 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_python_state(v, depth - 1) for v in obj]
    if hasattr(obj, "__dict__") and not callable(obj):
        return {k: _python_state(v, depth - 1) for k, v in vars(obj).items()}
    return ("object", id(obj))


def _graph_unsafe(stacked, before) -> str | None:
    """The failure of a stacked component that says it is graph-safe but changed its Python state
    in a step past the first (``before``: its state before that step)."""
    if not getattr(type(stacked), "graph_safe", False):
        return None
    after = _python_state(stacked)
    if after == before:
        return None
    changed = _first_change(before, after, type(stacked).__name__)
    return (f"{type(stacked).__name__} declares graph_safe = True, but its step changes {changed} from one step "
            "to the next, which a CUDA graph's replay would not do: keep what changes in tensors updated in place "
            "(count steps with self.tick(lr)), or drop graph_safe")


def _first_change(a, b, path: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a.keys() | b.keys():
            if a.get(k) != b.get(k):
                return _first_change(a.get(k), b.get(k), f"{path}.{k.strip(chr(39))}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_change(x, y, f"{path}[{i}]")
    if isinstance(a, tuple) and a[:1] == ("tensor",):
        return f"{path} (another tensor object)"
    return f"{path} ({a!r} to {b!r})"


def _stacked_schedule(s: Subject) -> str | None:
    factors = []
    for base_lr in (0.1, 0.3):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
        schedule = s.make(optimizer, TOTAL_STEPS)
        lrs = [optimizer.param_groups[0]["lr"]]
        for _ in range(TOTAL_STEPS):
            schedule.step()  # without optimizer steps, as a stack computes its table of rates
            lrs.append(optimizer.param_groups[0]["lr"])
        factors.append([lr / base_lr for lr in lrs])
    if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(*factors)):
        return "the learning rate is not the base rate times a function of the step alone: " \
               f"factors {factors[0][:4]}... for lr 0.1 but {factors[1][:4]}... for lr 0.3"
    trained = [lr / REFERENCE_LR for lr in s.first.lrs]  # the trajectory's Adam, stepped
    if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(trained, factors[0][1:])):
        return f"the learning rate depends on more than the step: {trained} while training, {factors[0][1:len(trained) + 1]} without"
    return passed(f"the learning rate a function of the step alone over {TOTAL_STEPS} steps")


def _stacked_regularizer(s: Subject) -> str | None:
    models, regs = [], []
    for seed in range(2):
        model, (reg,), *_ = s.parts(seed)
        models.append(model), regs.append(reg)
    models = [regs[0].stack_model(m) for m in models]  # as train_stack adapts every member
    stacked = type(regs[0]).stacked(regs)
    params, buffers, base, forward = _vmapped(models)
    x, y = fixed_batch(s.setting[1])
    base.eval()
    logits = forward(params, buffers, x)
    for i, model in enumerate(models):
        if not _close(logits[i].detach(), model.eval()(x).detach()):
            return f"member {i}'s model (wrap_model, stack_model) gives other eval-mode logits under vmap"
    penalty = stacked.penalty(params)
    for i, (model, reg) in enumerate(zip(models, regs)):
        own = float(reg.penalty(model))
        got = float(penalty[i]) if isinstance(penalty, torch.Tensor) else float(penalty)
        if not math.isclose(got, own, rel_tol=STACK_RTOL, abs_tol=STACK_ATOL):
            return f"member {i}'s stacked penalty is {got:.6g}, its own {own:.6g}"
    g = torch.Generator().manual_seed(2)
    for name, p in params.items():
        p.grad = torch.randn(p.shape, generator=g)
        for i, model in enumerate(models):
            model.get_parameter(name).grad = p.grad[i].clone()
    stacked.before_step(params)
    for reg, model in zip(regs, models):
        reg.before_step(model)
    stacked.after_step(params)
    for reg, model in zip(regs, models):
        reg.after_step(model)
    for i, model in enumerate(models):
        for name, p in model.named_parameters():
            if not _close(params[name].grad[i], p.grad):
                return f"member {i}'s gradient of {name!r} after the stacked before_step differs from its own"
            if not _close(params[name][i].detach(), p.detach()):
                return f"member {i}'s {name!r} after the stacked after_step differs from its own"
    xs = x.expand(len(models), *x.shape)
    out, _ = stacked.transform_batch(xs, y.expand(len(models), len(y)))
    if out.shape != xs.shape:
        return f"the stacked transform_batch turns a batch of shape {tuple(xs.shape)} into {tuple(out.shape)}"
    before = _python_state(stacked)  # a second step: what a CUDA graph would replay
    stacked.transform_batch(xs, y.expand(len(models), len(y)))
    stacked.penalty(params)
    stacked.before_step(params)
    stacked.after_step(params)
    if problem := _graph_unsafe(stacked, before):
        return problem
    return passed("eval-mode logits, penalty, before_step and after_step of 2 members")


# -- kind-specific checks -----------------------------------------------------------------------


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
            return f"on an input of shape {shape}: expected finite values of the same shape, got {_describe(out)}"
    return None


def optimizer_resumes(s: Subject) -> str | None:
    """resumes from its state_dict exactly"""
    model, _, optimizer, _, batch = s.parts(0)
    for _ in range(2):
        _step(model, [], optimizer, None, batch)
    twin = copy.deepcopy(model)
    resumed = s.make(twin.parameters())
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    _step(model, [], optimizer, None, batch)
    _step(twin, [], resumed, None, batch)
    return _first_difference(dict(model.named_parameters()), dict(twin.named_parameters()),
                             "one step after a state_dict round trip, parameter")


def optimizer_type(s: Subject) -> str | None:
    """is a torch.optim.Optimizer over the given parameters"""
    model = s.architecture(ONE_D)
    optimizer = s.make(model.parameters())
    if not isinstance(optimizer, torch.optim.Optimizer):
        return f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
    mine = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if mine != {id(p) for p in model.parameters()}:
        return "its parameter groups do not hold exactly the parameters it was given"
    return None


def _epoch_end(schedule, k: int) -> None:
    """The loop's call after each epoch (see hookspecs.py), here after step k: a validation loss
    that never improves."""
    if hasattr(schedule, "epoch_end"):
        schedule.epoch_end(k + 1, {"val_loss": 1.0, "val_accuracy": 0.5, "train_loss": 1.0, "train_accuracy": 0.5})


def schedule_rates(s: Subject) -> str | None:
    """keeps the learning rate finite and >= 0, and resumes from its state_dict

    A schedule with ``epoch_end`` is told a validation loss that never improves after every step
    (one step per epoch), over three times as many steps, so that a plateau schedule acts."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = s.make(optimizer, TOTAL_STEPS)
    steps = 3 * TOTAL_STEPS if hasattr(schedule, "epoch_end") else TOTAL_STEPS
    rates, resumed_at = [], steps // 2
    saved = None
    for k in range(steps):
        optimizer.step()
        schedule.step()
        _epoch_end(schedule, k)
        rates.append(optimizer.param_groups[0]["lr"])
        if k + 1 == resumed_at:
            saved = copy.deepcopy(schedule.state_dict()), copy.deepcopy(optimizer.state_dict())
    bad = [(k + 1, lr) for k, lr in enumerate(rates) if not (math.isfinite(lr) and lr >= 0)]
    if bad:
        return f"the learning rate after step {bad[0][0]} is {bad[0][1]!r} (expected a finite number >= 0)"
    twin = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    again = s.make(twin, TOTAL_STEPS)
    twin.load_state_dict(saved[1])
    again.load_state_dict(saved[0])
    rest = []
    for k in range(resumed_at, steps):
        twin.step()
        again.step()
        _epoch_end(again, k)
        rest.append(twin.param_groups[0]["lr"])
    if rest != rates[resumed_at:]:
        return f"resumed from its state_dict after step {resumed_at}, the rates are {rest} instead of {rates[resumed_at:]}"
    return passed(f"from {rates[0]:.3g} to {rates[-1]:.3g} over {steps} steps of base lr 0.1")


def regularizer_type(s: Subject) -> str | None:
    """is a dlbench.regularizer.Regularizer whose state survives a checkpoint"""
    reg = s.make()
    if not isinstance(reg, Regularizer):
        return f"expected a dlbench.regularizer.Regularizer, got {type(reg).__name__}"
    model, (trained,), optimizer, _, batch = s.parts(0)
    _step(model, [trained], optimizer, None, batch)
    trained.should_stop(1, {"train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5, "train_accuracy": 0.5})
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)  # as a checkpoint writes it
    buffer.seek(0)
    fresh = s.make()
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    if repr(fresh.state_dict()) != repr(trained.state_dict()):
        return "a fresh instance loaded with its state_dict has another state_dict"
    return None


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


# -- datasets -----------------------------------------------------------------------------------


def dataset_builds(s: Subject) -> str | None:
    """builds with the given options"""
    ds = s.dataset
    if not isinstance(ds, Dataset):
        return f"expected a dlbench.data.Dataset, got {type(ds).__name__}"
    return passed(f"{len(ds.y_train)} train and {len(ds.y_test)} test examples of shape {ds.input_shape}, "
                  f"{ds.num_classes} classes")


def dataset_arrays(s: Subject) -> str | None:
    """has float inputs, integer labels in range and matching splits"""
    ds = s.dataset
    if not (isinstance(ds.num_classes, int) and ds.num_classes >= 2):
        return f"num_classes is {ds.num_classes!r} (expected an int >= 2)"
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            return f"x_{split} and y_{split} must be numpy arrays, got {type(x).__name__} and {type(y).__name__}"
        if len(x) == 0 or len(x) != len(y) or y.ndim != 1:
            return f"x_{split} has {len(x)} examples and y_{split} shape {y.shape} (expected as many labels, one each)"
        if x.dtype.kind != "f" or not np.isfinite(x).all():
            return f"x_{split} must hold finite floats, got dtype {x.dtype}"
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= ds.num_classes:
            return f"y_{split} must hold integer class ids in [0, {ds.num_classes}), got dtype {y.dtype}, " \
                   f"range {y.min()}..{y.max()}"
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        return f"train examples have shape {ds.x_train.shape[1:]}, test examples {ds.x_test.shape[1:]}"
    return None


def dataset_hash(s: Subject) -> str | None:
    """gives the same content hash when built twice"""
    first, second = s.dataset.content_hash(), s.make().content_hash()
    if first != second:
        return f"built twice with the same options, the content hashes differ ({first[:12]} and {second[:12]})"
    return passed(f"sha256 {first[:12]}")


# -- preprocessing ------------------------------------------------------------------------------


def _fitted(s: Subject, shape):
    """The step fitted on a tiny training split of ``shape`` by ``preprocessing.apply``, as a trial
    fits it, and the data it gave."""
    from dlbench.preprocessing import apply

    step = s.make()
    return step, apply(step, s.component.name, tiny_data(shape))


def preprocessing_applies(s: Subject) -> str | None:
    """is fitted on the training split and transforms every split"""
    from dlbench.preprocessing import Preprocessor

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


TRAINS = [lowers_the_loss, same_seed_same_result, eval_is_deterministic, gradcheck, stacks]
CHECKS: dict[str, list[Callable[[Subject], str | None]]] = {
    "architecture": [builds, *TRAINS],
    "activation": [builds, fresh_module_per_call, *TRAINS],
    "initializer": [builds, initializer_keeps_the_model, lowers_the_loss, same_seed_same_result, gradcheck, stacks],
    "optimizer": [builds, optimizer_type, lowers_the_loss, same_seed_same_result, optimizer_resumes, stacks],
    "schedule": [builds, schedule_rates, lowers_the_loss, same_seed_same_result, stacks],
    "regularizer": [builds, regularizer_type, *TRAINS],
    "dataset": [dataset_builds, dataset_arrays, dataset_hash],
    "preprocessing": [preprocessing_applies, preprocessing_is_a_function],
}
