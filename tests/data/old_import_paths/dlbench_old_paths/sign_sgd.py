"""docs/plugins.md's example plugin sign_sgd.py as it stood before the reshape (commit 8934433),
verbatim: it imports from the module paths of that time."""
from typing import Annotated

import torch

from dlbench import Range, hookimpl, stackable
from dlbench.stacking import StackedOptimizer


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad.sign())


class StackedSignSGD(StackedOptimizer):
    graph_safe = True  # tensor work only: on a GPU a CUDA graph may capture the step and replay it

    @torch.no_grad()
    def step(self, params, lr):  # lr: [N], one per member; p: [N, ...]
        for p in params:
            p.sub_(self.per_member(lr, p) * p.grad.sign())
        self.tick(lr)  # count the step on the device (a replayed graph counts too)


@stackable(stacked=StackedSignSGD)
def sign_sgd(params, *, lr: Annotated[float, Range(gt=0)] = 0.001) -> torch.optim.Optimizer:
    """signSGD (Bernstein et al. 2018): w <- w - lr * sign(g).

    lr (> 0, default 0.001): the size of every parameter's step.
    """
    return SignSGD(params, lr)


@hookimpl
def dlbench_register_optimizers(register):
    register("sign_sgd", sign_sgd)
