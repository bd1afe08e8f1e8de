"""The stacking contract: what a plugin declares so that trials using it train together as one
stacked model (the planner that groups them into stacks is ``planning.py``).

A *stack* is N trials trained at once: their parameters stacked along a leading member axis
and the architecture's forward pass vectorized with ``torch.func.vmap``, so one batched kernel
does the work of N small ones. Each member keeps its own seed, initialization, data order,
dropout masks, hyperparameters, MLflow run, checkpointed state and verdict. Trials stack when
their configs can share one training loop:

* the same dataset, preprocessing, validation split, epochs, batch size and diagnostics interval;
* the same architecture and activation with the same options (same shapes), both declared
  stackable (``@stackable``: the forward pass is a pure function of parameters, buffers and
  input, so ``vmap`` may batch it);
* the same optimizer with the same non-numeric options; its numeric options (lr, momentum,
  betas, weight decay, ...) may differ per member. The optimizer declares its stacked update
  with ``@stackable(stacked=StackedX)`` (a :class:`StackedOptimizer`);
* a stackable schedule (the learning rate depends on the step alone), any options per member;
* the same regularizers in the same order, each with a ``stacked`` form
  (:meth:`dlbench.regularizer.Regularizer.stacked`) and equal ``stack_key()``;
* any initializer: initializers run per member, on the member's own model, before stacking
  (so greedy layer-wise pretraining stacks too). One with a stacked form
  (``@stackable(stacked=f)``: ``f(models, data, streams, **options)``, see
  :class:`MemberStreams`) initializes the members that share its options at once: greedy
  pretraining trains their autoencoders (RBMs) as one batched model instead of member after
  member.

Anything else trains alone, and ``dlbench run --dry-run`` says why.

On a GPU with CUDA graphs (``step_graph.py``), a trial that could stack but has no partner
trains as a *stack of one*: its steps replay from a graph, which an eager step of a small model
on a GPU, launch-bound, cannot match (when its optimizer and regularizers are graph-safe).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from dlbench.checkpoints import rng_state, set_rng_state
from dlbench.regularizer import Regularizer, per_member

STACKABLE = "dlbench_stackable"  # attribute a factory carries when it is declared stackable
STACKED = "dlbench_stacked"  # an optimizer factory's StackedOptimizer class, an initializer's stacked form


def stackable(factory=None, *, stacked=None):
    """Declare a plugin factory stackable (see the module docstring for what that promises).

    ``@stackable`` on an architecture, activation or schedule factory; ``@stackable(stacked=
    StackedSGD)`` on an optimizer factory, naming the class that updates stacked parameters;
    ``@stackable(stacked=f)`` on an initializer, naming the function that initializes several
    members' models at once (:class:`MemberStreams`).
    """
    def mark(f):
        setattr(f, STACKABLE, True)
        if stacked is not None:
            setattr(f, STACKED, stacked)
        return f

    return mark(factory) if factory is not None else mark


def is_stackable(factory) -> bool:
    return bool(getattr(factory, STACKABLE, False))


def component_stacks(component) -> bool | None:
    """Whether a registered component can train in a stack (None: the question does not apply,
    as for datasets and initializers, which never stand in the way)."""
    if component.kind in ("architecture", "activation", "schedule", "loss"):
        return is_stackable(component.factory)
    if component.kind == "optimizer":
        return getattr(component.factory, STACKED, None) is not None
    if component.kind == "regularizer":
        cls = component.factory
        return isinstance(cls, type) and issubclass(cls, Regularizer) and cls.can_stack()
    return None


class StackedOptimizer:
    """The update rule of an elementwise optimizer over stacked parameters.

    ``options`` holds the optimizer's options as the study set them, one value per member:
    numbers as float tensors of shape [N] on the device (they may differ per member),
    anything else as the single value every member shares. Every state tensor has the member
    axis first, so dropping members (:meth:`select`) is an index. ``step(params, lr)`` gets
    the stacked parameters (gradients in ``.grad``) and the members' learning rates [N].

    ``graph_safe = True`` promises that ``step`` is tensor work alone once its state exists
    (created on the first step): no Python value that changes from step to step, no read of a
    tensor's value on the host. A CUDA graph captures such a step once and replays it
    (``dlbench run --cuda-graphs``); count steps with :meth:`tick`, which counts on the device.
    """

    graph_safe = False

    def __init__(self, options: dict):
        self.options = options
        self.state: dict[str, list[torch.Tensor | None]] = {}
        self._count: torch.Tensor | None = None  # steps taken, on the device (see tick)
        self._loaded_steps = 0

    per_member = staticmethod(per_member)  # an [N] tensor shaped to broadcast against a stacked [N, ...]

    def buffer(self, name: str, index: int, like: torch.Tensor, init=torch.zeros_like) -> torch.Tensor:
        """State tensor ``name`` of parameter ``index`` (created by ``init(like)`` on first use)."""
        slots = self.state.setdefault(name, [])
        while len(slots) <= index:
            slots.append(None)
        if slots[index] is None:
            slots[index] = init(like)
        return slots[index]

    def has(self, name: str, index: int) -> bool:
        """Whether state tensor ``name`` of parameter ``index`` exists yet."""
        slots = self.state.get(name, [])
        return index < len(slots) and slots[index] is not None

    def tick(self, like: torch.Tensor) -> torch.Tensor:
        """Count one more step; returns the steps taken, this one included, as a float64 tensor
        on ``like``'s device, incremented in place (so a replayed CUDA graph counts too)."""
        if self._count is None:
            self._count = torch.tensor(float(self._loaded_steps), dtype=torch.float64, device=like.device)
        self._count += 1
        return self._count

    @property
    def steps(self) -> int:
        """Steps taken (reads the device counter: for checkpoints, not for every step)."""
        return int(self._count.item()) if self._count is not None else self._loaded_steps

    @steps.setter
    def steps(self, value: int) -> None:  # an optimizer that counts by hand (not graph-safe)
        self._loaded_steps, self._count = int(value), None

    def step(self, params: list[torch.Tensor], lr: torch.Tensor) -> None:
        raise NotImplementedError

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the members at ``keep`` (indices), in that order."""
        self.options = {k: v[keep] if isinstance(v, torch.Tensor) else v for k, v in self.options.items()}
        self.state = {k: [t[keep] if t is not None else None for t in ts] for k, ts in self.state.items()}

    def state_dict(self) -> dict:
        return {"state": self.state, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.state, self.steps = state["state"], state["steps"]


class MemberStreams:
    """The random streams of a stack's members while a stacked initializer runs.

    Member ``i``'s stream is the global one (Python, NumPy, torch's CPU and CUDA generators) as
    it stood when the member's model was built, before its initializer. Inside
    ``with streams.member(i):`` the global generators are member ``i``'s, so whatever is drawn
    there (an init, a decoder's weights) is what the member's initializer alone draws at that
    point of its sequence; on leaving, the stream is kept where it got to and the outer one put
    back. For draws in a loop (a data order per epoch, a mask per batch), ``generator(i,
    device)`` is the same stream's torch generator of ``device`` as a ``torch.Generator``, to
    pass as ``generator=``: ``torch.randperm(n, device=d, generator=streams.generator(i, d))``
    draws what ``torch.randperm(n, device=d)`` draws alone, without swapping every generator;
    ``epoch_batches`` gives an epoch's minibatches of every member so drawn.
    A stacked initializer draws every member's values in the order its plain form draws them.
    """

    def __init__(self, states: list[dict]):
        self._states = list(states)
        self._generators: dict[int, tuple[torch.device, torch.Generator]] = {}

    def __len__(self) -> int:
        return len(self._states)

    @property
    def states(self) -> list[dict]:
        """Each member's stream where it got to (``dlbench.train.rng_state`` dicts)."""
        for i in list(self._generators):
            self._take_back(i)
        return self._states

    @contextmanager
    def member(self, i: int):
        self._take_back(i)
        outer = rng_state()
        set_rng_state(self._states[i])
        try:
            yield
        finally:
            self._states[i] = rng_state()
            set_rng_state(outer)

    def generator(self, i: int, device: torch.device) -> torch.Generator:
        """Member ``i``'s torch generator of ``device`` (valid until the next ``member(i)``)."""
        device = torch.device(device)
        if i in self._generators and self._generators[i][0] != device:
            self._take_back(i)
        if i not in self._generators:
            generator = torch.Generator(device=device)
            generator.set_state(self._torch_state(i, device))
            self._generators[i] = (device, generator)
        return self._generators[i][1]

    def epoch_batches(self, inputs: torch.Tensor, batch_size: int, per_member: bool = False):
        """One epoch of minibatches for every member at once, ``[N, B, ...]`` each: member ``i``'s
        rows in the order ``torch.randperm(n, device=inputs.device).split(batch_size)`` gives it
        alone, drawn from its stream when the first batch is asked for. ``inputs``: ``[n, ...]``
        shared by the members, or with ``per_member`` ``[N, n, ...]``, each member's own."""
        device, n_members = inputs.device, len(self)
        n = inputs.shape[1] if per_member else inputs.shape[0]
        orders = torch.stack([torch.randperm(n, device=device, generator=self.generator(i, device))
                              for i in range(n_members)])
        rows = torch.arange(n_members, device=device)[:, None]
        for idx in orders.split(batch_size, dim=1):  # [N, B]
            yield inputs[rows, idx] if per_member else inputs[idx]

    def _torch_state(self, i: int, device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            return self._states[i]["cuda"][_cuda_index(device)]
        return self._states[i]["torch"]

    def _take_back(self, i: int) -> None:
        if i not in self._generators:
            return
        device, generator = self._generators.pop(i)
        state = dict(self._states[i])
        if device.type == "cuda":
            state["cuda"] = list(state["cuda"])
            state["cuda"][_cuda_index(device)] = generator.get_state()
        else:
            state["torch"] = generator.get_state()
        self._states[i] = state


def _cuda_index(device: torch.device) -> int:
    """Where ``device``'s state is in ``torch.cuda.get_rng_state_all()``."""
    return device.index if device.index is not None else torch.cuda.current_device()


def stacked_module(models: list):
    """The members' parameters and buffers stacked along a leading member axis, a structure-only
    copy of the first model (``base``: put it in train or eval mode) and ``forward(p, b, x)``, that
    module as a function of them, for ``torch.func.vmap`` to batch over the members."""
    from torch.func import functional_call, stack_module_state  # only where stacks train

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def forward(p, b, x):
        return functional_call(base, (p, b), (x,))

    return params, buffers, base, forward


def stacked_initializer(component):
    """A registered initializer's stacked form, or None (it runs per member)."""
    return getattr(component.factory, STACKED, None)
