"""The stacked checks, both of optional capabilities: a component that declares it stacks (see
``dlbench/stacking.py``) gives, stacked, what its members give one at a time (an architecture or
activation over several training steps and an evaluation, parameters, buffers and logits); a
stacked optimizer or regularizer that declares ``graph_safe = True`` keeps its Python state from
one step to the next. A component that declares neither is reported as not supporting it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from dlbench.build import seed_everything
from dlbench.contract.outcome import Note, Skip, Unsupported, passed
from dlbench.contract.subject import REFERENCE_LR, STEPS, TOTAL_STEPS, Subject, fixed_batch, tiny_data
from dlbench.stacking import STACKED, MemberStreams, component_stacks, stacked_initializer, stacked_module
from dlbench.train import rng_state

STACK_RTOL, STACK_ATOL = 1e-4, 1e-5  # vmap's batched kernels round differently from single ones


def stacks(s: Subject) -> str | None:
    """a stacked step equals the members' own steps"""
    if s.kind == "initializer":
        if stacked_initializer(s.component) is None:
            raise Unsupported("it has no stacked form: the members of a stack initialize one after another")
        return _stacked_initializer(s)
    if not component_stacks(s.component):
        raise Unsupported("it does not declare itself stackable: trials using it train alone")
    return {"architecture": _stacked_forward, "activation": _stacked_forward, "optimizer": _stacked_optimizer,
            "schedule": _stacked_schedule, "regularizer": _stacked_regularizer}[s.kind](s)


def graph_safe(s: Subject) -> str | None:
    """its stacked step is CUDA-graph safe (optional)"""
    if not component_stacks(s.component):
        raise Unsupported("it does not stack, so its trials never step from a CUDA graph")
    if s.stacked_step is None:
        raise Skip("not run: the stacked step did not complete (see the stacked check)")
    stacked, before = s.stacked_step
    if not getattr(type(stacked), "graph_safe", False):
        raise Unsupported(f"{type(stacked).__name__} does not declare graph_safe = True: on a GPU its stacks step "
                          "eagerly (the same results, slower), not from a CUDA graph (--cuda-graphs)")
    if problem := _graph_unsafe(stacked, before):
        return problem
    return passed(f"{type(stacked).__name__}: its Python state unchanged from one step to the next")


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
    trained = _stacked_training(s)
    if trained is not None and not isinstance(trained, Note):
        return trained
    return passed(f"{len(models)} members, eval-mode outputs and gradients" + (f"; {trained}" if trained else ""))


PURE = ("a @stackable forward pass must be a pure function of parameters, buffers and input "
        "(dlbench/stacking.py): no batch statistics kept in buffers (BatchNorm's running_mean, running_var, "
        "num_batches_tracked), no buffer updated in place; drop @stackable and its trials train alone")


def _stacked_training(s: Subject) -> str | None:
    """Two members trained :data:`STEPS` steps in train mode, stacked (one vmapped forward pass,
    Adam on the stacked tensors, elementwise each member's own Adam) and each alone, then
    evaluated in eval mode: every buffer, every parameter and the eval-mode logits compared; any
    buffer a training step changes is a failure of its own (batch statistics)."""
    models = _members(s)
    x, y = fixed_batch(s.setting[1])
    before = [{n: b.detach().clone() for n, b in m.named_buffers()} for m in models]
    params, buffers, base, forward = stacked_module(models)
    stacked_opt = torch.optim.Adam(params.values(), lr=REFERENCE_LR)
    base.train()
    train = vmap(forward, in_dims=(0, 0, None), randomness="error")
    try:
        for _ in range(STEPS):
            logits = train(params, buffers, x)
            losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(models)), reduction="none")
            stacked_opt.zero_grad(set_to_none=True)
            losses.view(len(models), -1).mean(1).sum().backward()  # member i's gradient: its own loss's
            stacked_opt.step()
    except RuntimeError as exc:
        if "randomness" not in str(exc):
            raise
        random_draws = True
    else:
        random_draws = False
    own_opts = [torch.optim.Adam(m.parameters(), lr=REFERENCE_LR) for m in models]
    for model, optimizer in zip(models, own_opts):
        model.train()
        for _ in range(STEPS):
            torch.manual_seed(1)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    changed = [n for n, b in models[0].named_buffers() if not torch.equal(b, before[0][n])]
    if not random_draws:
        for i, model in enumerate(models):
            for name, b in model.named_buffers():
                if not _close(buffers[name][i].detach().double(), b.detach().double()):
                    diff = (buffers[name][i].double() - b.double()).abs().max().item()
                    return (f"after {STEPS} training steps, member {i}'s buffer {name!r} stacked differs from its own "
                            f"training by {diff:.3g}: {PURE}")
    if changed:
        return (f"a training step changes the buffer{'s' if len(changed) > 1 else ''} "
                f"{', '.join(map(repr, changed[:3]))}{' and more' if len(changed) > 3 else ''} in place: {PURE}")
    if random_draws:
        return passed("random draws in training: the training steps compared in eval mode only")
    base.eval()
    with torch.no_grad():
        logits = vmap(forward, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
    for i, model in enumerate(models):
        for name, p in model.named_parameters():
            if not _close(params[name][i].detach(), p.detach()):
                diff = (params[name][i] - p).abs().max().item()
                return f"after {STEPS} training steps, member {i}'s {name!r} stacked differs from its own by {diff:.3g}"
        model.eval()
        with torch.no_grad():
            alone = model(x)
        if not _close(logits[i], alone):
            return (f"after {STEPS} training steps, member {i}'s eval-mode logits stacked differ from its own by "
                    f"{(logits[i] - alone).abs().max().item():.3g}")
    return passed(f"{STEPS} training steps and an evaluation, parameters, buffers and logits")


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
    s.stacked_step = stacked, before
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
    s.stacked_step = stacked, before
    return passed("eval-mode logits, penalty, before_step and after_step of 2 members")
