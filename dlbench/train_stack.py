"""A stack: N trials trained at once as one model with stacked parameters (see ``stacking.py``).

Each member is built exactly as it would be alone (its seed, its architecture, regularizers
and initializer, greedy pretraining included), then the members' parameters are stacked along a
leading axis and one ``torch.func.vmap`` of the architecture's forward pass trains them all:
one batched kernel where there were N small ones. A member draws its own batches (its data-order
generator, continuing the stream where its build left it, as alone), its own dropout masks, uses its own hyperparameters and learning-rate
schedule, and leaves the stack when it diverges or stops early; the others go on.

A member agrees with the same trial trained alone to float32 rounding up to its first random
draw inside the model (dropout, input noise): identical initial weights, batches and epoch-0
metrics. Its masks come from the stack's shared generator, so with dropout a member is another
draw from the same distribution: means over seeds agree, single values do not. Re-running the same
stack (``dlbench reproduce`` does, from the members recorded in ``stack.json``) is bit-exact.
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from functools import partial

import torch
from torch.func import vmap

from dlbench.checkpoints import Checkpoints, rng_state, set_rng_state
from dlbench.build import build, build_loss, build_model, build_optimizer, seed_everything
from dlbench.data import DeviceData
from dlbench.planning import Work, initializer_groups
from dlbench.regularizer import Regularizer, overrides
from dlbench.stacking import STACKED, MemberStreams, stacked_module
from dlbench.step_graph import GraphedStep, graphs_wanted, why_not_graphed
from dlbench.train import (EVAL_CHUNK, end_training, exact_accuracies, order_generator_after_build, record_epoch,
                           replay_history)
from dlbench.trial import StackInfo, Trial, TrialInfo, TrialResult, canonical_json
from dlbench.verdict import StopRule


class CannotStack(Exception):
    """The members' models turned out not to share one structure: train them one at a time."""


class _Member:
    """One trial inside a stack: its solo model (for diagnostics and state), regularizers, result."""

    def __init__(self, trial: Trial, model, regularizers, optimizer, schedule, device):
        self.trial, self.model, self.regularizers = trial, model, regularizers
        self.optimizer, self.schedule = optimizer, schedule
        self.order = order_generator_after_build(device)  # its batches: those it would draw alone
        self.result = TrialResult(status="finished")
        self.rule = StopRule(trial, regularizers)  # its end-of-epoch verdict, as alone
        self.lrs: list[float] = []


class _LrView:
    """What an after-backward observer reads of a member's optimizer: its current learning rate."""

    def __init__(self, lr: float):
        self.param_groups = [{"lr": lr}]


def run_stack(work: Work, registry, data: DeviceData, device: torch.device, hook, finish,
              checkpoints: Checkpoints | None = None, cuda_graphs: str = "auto") -> None:
    """Train the members of ``work`` together; ``finish(trial, result)`` is called for each
    member as it leaves the stack (finished, diverged, stopped early) and at the end.

    A member whose build raises (its initializer, say) is finished as failed and the others
    train. Raises :class:`CannotStack` before any other hook is called when the members' models
    differ in structure; an exception while training propagates (the executor marks the
    remaining members failed with its traceback).

    ``cuda_graphs`` (auto, on, off): replay each training step from a CUDA graph on a GPU when
    the stack's optimizer and regularizers are graph-safe (``step_graph.py``).
    """
    started = time.perf_counter()
    members = build_members(work, registry, data, device, finish)
    if not members:
        return
    stack = _Stack(work, members, registry, data, device, checkpoints, cuda_graphs)
    stack.start(hook)
    epochs = stack.cfg["epochs"]
    for epoch in range(stack.first_epoch, epochs + 1):
        if epoch > 0:
            stack.train_epoch(epoch, hook)
        leaving = stack.end_epoch(epoch, hook)
        if leaving:
            stack.end_members(leaving, epoch, hook, finish, started)
            if not stack.leave(leaving):
                break
        if checkpoints and epoch < epochs and checkpoints.due():
            stack.save(checkpoints, epoch, hook)
    else:
        stack.end_members(range(len(stack.members)), epochs, hook, finish, started)
    if checkpoints:
        checkpoints.clear()


class _Stack:
    """The members training together: their stacked parameters and buffers, the stacked
    optimizer and regularizers, each member's learning rate before every step, the step that
    trains them all (eager or replayed from CUDA graphs)."""

    def __init__(self, work: Work, members: list[_Member], registry, data: DeviceData, device: torch.device,
                 checkpoints: Checkpoints | None, cuda_graphs: str):
        """Stack the built members (after their models' stacked forms and a structure check),
        seed the stack's own stream, and resume from ``checkpoints`` when they hold this stack."""
        self.work, self.data, self.device = work, data, device
        self.cfg = cfg = work.members[0].config
        for reg in members[0].regularizers:  # e.g. dropout: p as a buffer, one per member
            for m in members:
                m.model = reg.stack_model(m.model)
        _check_same_structure(members)
        seed_everything(int(work.stack_id[:8], 16))  # the stack's own stream: dropout masks, noise

        self.members = members
        self.steps_per_epoch = math.ceil(len(data.y_train) / cfg["batch_size"])
        _learning_rates(members, cfg["epochs"] * self.steps_per_epoch)
        # base: the structure only
        self.params, self.buffers, self.base, forward = stacked_module([m.model for m in members])
        self.train_forward = vmap(forward, randomness="different")  # x: [N, B, ...], one batch per member
        self.eval_forward = vmap(forward, in_dims=(0, 0, None), randomness="different")  # x shared
        self.optimizer = _stacked_optimizer(members, registry, device)
        self.loss = build_loss(cfg, registry, data.num_classes)  # per example; the members share it (stack_key)
        self.stacked_regs = [type(r).stacked([m.regularizers[k] for m in members])
                             for k, r in enumerate(members[0].regularizers)]
        self.lr_table = torch.tensor([m.lrs for m in members], device=device)  # [N, steps + 1]
        self.resumed_epoch = self._resume(checkpoints)
        self.first_epoch = 0 if self.resumed_epoch is None else self.resumed_epoch + 1

        why_eager = why_not_graphed(self.optimizer, self.stacked_regs)
        self.step_fn = GraphedStep(self._grads, self._update,
                                   enabled=graphs_wanted(cuda_graphs, device) and not why_eager)

    def _resume(self, checkpoints: Checkpoints | None) -> int | None:
        """Load the stack's checkpoint when it holds these members: the epoch it was saved
        after, or None (no checkpoint, or one saved by another composition of the stack)."""
        resumed = checkpoints.read() if checkpoints else None
        if resumed is None or resumed["members"] != [m.trial.config_hash for m in self.members]:
            return None  # none, or saved by another composition of the stack: start over
        self.params = {k: v.to(self.device).requires_grad_() for k, v in resumed["params"].items()}
        self.buffers = {k: v.to(self.device) for k, v in resumed["buffers"].items()}
        self.optimizer.load_state_dict(_to(resumed["optimizer"], self.device))
        for m, state in zip(self.members, resumed["per_member"]):
            for reg, reg_state in zip(m.regularizers, state["regularizers"]):
                reg.load_state_dict(reg_state)
            m.order.set_state(state["order"])
            m.result.history = state["history"]
        return resumed["epoch"]

    def save(self, checkpoints: Checkpoints, epoch: int, hook) -> None:
        """The stack's checkpoint after ``epoch``, once the observers made what came before durable."""
        for m in self.members:
            hook.dlbench_checkpoint(trial=m.trial, epoch=epoch)
        checkpoints.write({
            "epoch": epoch, "members": [m.trial.config_hash for m in self.members],
            "params": {k: v.detach() for k, v in self.params.items()}, "buffers": self.buffers,
            "optimizer": self.optimizer.state_dict(),
            "per_member": [{"regularizers": [r.state_dict() for r in m.regularizers],
                            "order": m.order.get_state(), "history": m.result.history} for m in self.members],
        })

    def start(self, hook) -> None:
        """``dlbench_trial_start`` for each member; a resumed member replays the epochs it had."""
        work = self.work
        for m in self.members:
            stack = StackInfo(id=work.stack_id, size=len(work.members), member=work.members.index(m.trial),
                              members=[t.config for t in work.members], cuda_graphs=self.step_fn.enabled,
                              stacked_init=work.stacked_init)
            info = TrialInfo.of(m.trial, m.model, self.data, self.device, resumed_from_epoch=self.resumed_epoch,
                                stack=stack)
            hook.dlbench_trial_start(trial=m.trial, model=m.model, info=info)
            replay_history(m.result, self.resumed_epoch, hook, m.trial)

    def _grads(self, idx) -> None:
        """The gradients of one step; ``idx`` [N, B]: each member its own batch."""
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        for reg in self.stacked_regs:
            x, y = reg.transform_batch(x, y)
        logits = self.train_forward(self.params, self.buffers, x)
        losses = self.loss(logits.flatten(0, 1), y.flatten()).view(len(idx), -1)
        losses = losses.mean(1)
        for reg in self.stacked_regs:
            losses = losses + reg.penalty(self.params)
        for p in self.params.values():
            p.grad = None
        losses.sum().backward()  # member i's parameters get the gradient of its own loss

    def _update(self, lr) -> None:
        """The update of one step; ``lr`` [N]: each member's rate for this step."""
        for reg in self.stacked_regs:
            reg.before_step(self.params)
        self.optimizer.step(list(self.params.values()), lr)
        for reg in self.stacked_regs:
            reg.after_step(self.params)

    def train_epoch(self, epoch: int, hook) -> None:
        """One pass over the training set, each member in its own batch order; the
        after-backward observers see the members at the diagnostics steps."""
        self.base.train()
        n = len(self.data.y_train)
        every = int(self.cfg.get("diagnostics_every", 0) or 0)
        orders = torch.stack([torch.randperm(n, device=self.device, generator=m.order) for m in self.members])
        for j, idx in enumerate(orders.split(self.cfg["batch_size"], dim=1)):
            step = (epoch - 1) * self.steps_per_epoch + j + 1
            observe = None
            if every and (step == 1 or step % every == 0):
                observe = partial(_observe_gradients, self.members, self.params, self.buffers, hook, step, self.data)
            self.step_fn(idx, self.lr_table[:, step - 1], observe)

    def end_epoch(self, epoch: int, hook) -> list[int]:
        """Evaluate every member (one device sync), record its epoch and ask its verdict: the
        positions of the members that leave (diverged, stopped early, pruned)."""
        self.base.eval()
        metrics = _evaluate(self.eval_forward, self.params, self.buffers, self.data, len(self.members), self.loss)
        leaving = []
        for i, m in enumerate(self.members):
            row = metrics[i] | {"lr": m.lrs[epoch * self.steps_per_epoch]}
            record_epoch(m.result, epoch, row, hook, m.trial)
            # the regularizers that look at the model at epoch ends see the member's own
            status = m.rule.verdict(epoch, row, m.result.history, m.model,
                                    sync=partial(_copy_member, m.model, self.params, self.buffers, i))
            if status is not None:
                m.result.status = status
                leaving.append(i)
        return leaving

    def end_members(self, positions, epoch: int, hook, finish, started: float) -> None:
        """End the training of the members at ``positions`` after ``epoch`` (``end_training``
        on each one's own model) and hand each its result (``finish``)."""
        for i in positions:
            m = self.members[i]
            _end_member(m, i, self.params, self.buffers, self.data, hook, epoch * self.steps_per_epoch, self.loss)
            m.result.seconds = time.perf_counter() - started
            finish(m.trial, m.result)

    def leave(self, leaving: list[int]) -> bool:
        """The members at ``leaving`` leave the stack; whether any member is left."""
        keep = [i for i in range(len(self.members)) if i not in leaving]
        if not keep:
            return False
        self.members, self.params, self.buffers, self.lr_table = _select(keep, self.members, self.params,
                                                                         self.buffers, self.lr_table)
        self.optimizer.select(torch.tensor(keep, device=self.device))
        for reg in self.stacked_regs:
            reg.select(keep)
        self.step_fn.reset()  # the graphs hold the old stack's tensors
        return True


def build_members(work: Work, registry, data: DeviceData, device, finish) -> list[_Member]:
    """Each member built as it would be alone (its seed, model, regularizers, initializer,
    optimizer, schedule). Members whose initializer has a stacked form and the same options
    (``work.stacked_init``) are initialized together: each model is built with the member's seed,
    then the stacked form initializes them all, each drawing from its own stream
    (:class:`~dlbench.stacking.MemberStreams`), and each member's build goes on from where its
    stream got to. A member whose build raises fails alone (``finish``); the others train."""
    def failed(trial, exc):
        finish(trial, TrialResult(status="failed", error="".join(traceback.format_exception(exc))))

    def alone(trial):
        seed_everything(trial.seed)
        try:
            return _Member(trial, *build(trial, registry, data, device), device)
        except Exception as exc:  # a member whose plugins raise fails alone; the others train
            failed(trial, exc)

    together = initializer_groups(work, registry)
    built: dict[int, _Member | None] = {i: alone(t) for i, t in enumerate(work.members)
                                         if not any(i in group for group, _ in together)}
    for group, form in together:
        models, states = {}, {}
        for i in group:
            trial = work.members[i]
            seed_everything(trial.seed)
            try:
                models[i] = build_model(trial, registry, data, device)
                states[i] = rng_state()
            except Exception as exc:
                failed(trial, exc)
        if not models:
            continue
        streams = MemberStreams([states[i] for i in models])
        spec = work.members[group[0]].config["initializer"]  # the group's, the same for each member
        try:
            form([model for model, _ in models.values()], data, streams, **{k: v for k, v in spec.items() if k != "name"})
        except Exception as exc:  # a stacked form that raises: the members initialize one by one
            built |= {i: alone(work.members[i]) for i in models}
            if any(built[i] is not None for i in models):  # not an option every member's build rejects
                warnings.warn(f"the stacked form of initializer {spec.get('name')!r} raised ({exc!r}); "
                              "its members initialized one after another")
            continue
        for i, state in zip(models, streams.states):
            trial, (model, regularizers) = work.members[i], models[i]
            set_rng_state(state)  # the member's stream where its initializer left it
            try:
                built[i] = _Member(trial, model, regularizers, *build_optimizer(trial, registry, model, data), device)
            except Exception as exc:
                failed(trial, exc)
    return [built[i] for i in sorted(built) if built[i] is not None]


def _check_same_structure(members: list[_Member]) -> None:
    def shapes(model):
        return [(k, tuple(v.shape), v.dtype) for k, v in [*model.named_parameters(), *model.named_buffers()]]

    reference = shapes(members[0].model)
    for m in members[1:]:
        if shapes(m.model) != reference:
            raise CannotStack(f"{m.trial.title} builds a model with other parameters than "
                              f"{members[0].trial.title}")


def _learning_rates(members: list[_Member], total_steps: int) -> None:
    """Each member's learning rate before every step, from its own schedule object (a function of
    the step alone, as a stackable schedule promises; its warm-up included), computed once per
    distinct schedule."""
    cache: dict[str, list[float]] = {}
    for m in members:
        key = canonical_json({"schedule": m.trial.config["schedule"], "lr": m.optimizer.param_groups[0]["lr"],
                              "warmup_fraction": m.trial.config.get("warmup_fraction", 0.0)})
        if key not in cache:
            lrs = [m.optimizer.param_groups[0]["lr"]]
            with warnings.catch_warnings():  # stepping the schedule without optimizer steps is the point
                warnings.simplefilter("ignore")
                for _ in range(total_steps):
                    m.schedule.step()
                    lrs.append(m.optimizer.param_groups[0]["lr"])
            cache[key] = lrs
        m.lrs = cache[key]


def _stacked_optimizer(members: list[_Member], registry, device):
    spec = members[0].trial.config["optimizer"]
    cls = getattr(registry.get("optimizer", spec["name"]).factory, STACKED)
    options = {}
    for key, value in spec.items():
        if key == "name":
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            options[key] = torch.tensor([float(m.trial.config["optimizer"][key]) for m in members], device=device)
        else:
            options[key] = value
    return cls(options)


def _overrides(regularizers, method: str) -> bool:
    return any(overrides(type(r), Regularizer, method) for r in regularizers)


@torch.no_grad()
def _copy_member(model, params, buffers, i: int, grads: bool = False) -> None:
    """Put member ``i``'s current weights (and gradients) from the stack into its own model."""
    for name, p in model.named_parameters():
        p.copy_(params[name][i])
        if grads:
            p.grad = params[name].grad[i] if params[name].grad is not None else None
    for name, b in model.named_buffers():
        b.copy_(buffers[name][i])


def _end_member(m: _Member, i: int, params, buffers, data, hook, step: int, loss) -> None:
    """A member's training is over: its regularizers may change its final weights (early
    stopping restores the best epoch's) on its own model, evaluated alone then (``end_training``)."""
    if m.result.status == "finished" and _overrides(m.regularizers, "end_of_training"):
        _copy_member(m.model, params, buffers, i)
        end_training(m.model, m.regularizers, data, m.result, m.lrs[step], hook, m.trial, loss)


def _observe_gradients(members, params, buffers, hook, step: int, data) -> None:
    """Show each member's own model, with the stack's current weights and gradients, to the
    after-backward observers (diagnostics). Only at diagnostics steps: copying costs."""
    for i, m in enumerate(members):
        _copy_member(m.model, params, buffers, i, grads=True)
    for m in members:
        hook.dlbench_after_backward(trial=m.trial, model=m.model, optimizer=_LrView(m.lrs[step - 1]),
                                    step=step, data=data)
        for p in m.model.parameters():
            p.grad = None


@torch.no_grad()
def _evaluate(eval_forward, params, buffers, data: DeviceData, n: int, loss) -> list[dict[str, float]]:
    """Loss (``loss``, per example) and accuracy of every member on every split (eval mode), one
    device sync for all."""
    names, columns = [], []
    chunk = max(256, EVAL_CHUNK // n)  # bounded memory: n members see each chunk at once
    for split, (x, y) in data.splits().items():
        loss_sum = torch.zeros(n, device=x.device)
        correct = torch.zeros(n, device=x.device)
        for xb, yb in zip(x.split(chunk), y.split(chunk)):
            logits = eval_forward(params, buffers, xb)  # [n, b, classes]
            loss_sum += loss(logits.flatten(0, 1), yb.repeat(n)).view(n, -1).sum(1)
            correct += (logits.argmax(2) == yb).sum(1)
        names += [f"{split}_loss", f"{split}_correct"]
        columns += [loss_sum / len(y), correct]
    rows = torch.stack(columns, 1).tolist()  # CPU-GPU sync point
    return [exact_accuracies(dict(zip(names, row)), data) for row in rows]  # as a trial alone has them


def _select(keep, members, params, buffers, lr_table):
    index = torch.tensor(keep, device=lr_table.device)
    params = {k: v.detach()[index].requires_grad_() for k, v in params.items()}
    buffers = {k: v[index] for k, v in buffers.items()}
    return [members[i] for i in keep], params, buffers, lr_table[index]


def _to(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [_to(v, device) for v in state]
    return state

