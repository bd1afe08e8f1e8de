"""The checks of every kind that trains: it builds on a tiny input, a few steps lower the loss,
the same seed gives the same result, eval mode is deterministic, custom autograd passes a
float64 gradcheck."""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call

from dlbench.build import seed_everything
from dlbench.contract.architectures import architecture_builds
from dlbench.contract.outcome import Skip, passed
from dlbench.contract.subject import CLASSES, STEPS, WIDTH, Subject, describe, first_difference


def builds(s: Subject) -> str | None:
    """builds on a tiny input"""
    if s.kind == "architecture":
        return architecture_builds(s)
    arch, shape = s.setting
    model, *_, (x, _) = s.parts(0)
    model.eval()
    with torch.no_grad():
        out = model(x)
    if out.shape != (len(x), CLASSES) or not torch.isfinite(out).all():
        return f"expected finite logits of shape {(len(x), CLASSES)}, got {describe(out)}"
    return passed(f"in a width-{WIDTH} {arch} on inputs of shape {shape}")


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
    if problem := first_difference(a.state, b.state, "built and trained twice from seed 0,"):
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
