"""Built-in optimizers: torch.optim with the hyperparameters named as in the course notes.

Each also has a stacked update (``Stacked*``) for trials trained together: the same formulas as
torch.optim's single-tensor implementation, applied to parameters stacked along a member axis,
with every numeric hyperparameter one value per member.
"""

from __future__ import annotations

from typing import Annotated

import torch

from dlbench import Range, hookimpl
from dlbench.stacking import StackedOptimizer, stackable

LearningRate = Annotated[float, Range(gt=0)]
Coefficient = Annotated[float, Range(ge=0, lt=1)]  # momentum, betas, a moving average's decay
Epsilon = Annotated[float, Range(gt=0)]
WeightDecay = Annotated[float, Range(ge=0)]


@hookimpl
def dlbench_register_optimizers(register):
    for name, factory in [("sgd", sgd), ("adam", adam), ("adamw", adamw), ("rmsprop", rmsprop), ("adagrad", adagrad)]:
        register(name, factory)


class StackedSGD(StackedOptimizer):
    graph_safe = True

    @torch.no_grad()
    def step(self, params, lr):
        o = self.options
        for i, p in enumerate(params):
            g = p.grad + self.per_member(o["weight_decay"], p) * p
            mu = self.per_member(o["momentum"], p)
            first = not self.has("momentum", i)
            buf = self.buffer("momentum", i, g, init=torch.clone)  # torch.optim starts it at g
            if not first:
                buf.mul_(mu).add_(g)
            g = g + mu * buf if o["nesterov"] else buf
            p.sub_(self.per_member(lr, p) * g)
        self.tick(lr)


class StackedAdam(StackedOptimizer):
    decoupled = False  # AdamW: weight decay applied to the parameters, not the gradient
    graph_safe = True

    @torch.no_grad()
    def step(self, params, lr):
        o = self.options
        t = self.tick(lr)  # the step count on the device: the bias corrections need it
        beta1, beta2 = o["beta1"].double(), o["beta2"].double()
        step_size = (lr.double() / (1 - beta1 ** t)).float()
        bc2_sqrt = ((1 - beta2 ** t) ** 0.5).float()
        for i, p in enumerate(params):
            wd = self.per_member(o["weight_decay"], p)
            if self.decoupled:
                p.mul_(1 - self.per_member(lr, p) * wd)
                g = p.grad
            else:
                g = p.grad + wd * p
            m, v = self.buffer("exp_avg", i, p), self.buffer("exp_avg_sq", i, p)
            m.lerp_(g, 1 - self.per_member(o["beta1"], p))
            v.mul_(self.per_member(o["beta2"], p)).addcmul_(g, g * (1 - self.per_member(o["beta2"], p)))
            denom = (v.sqrt() / self.per_member(bc2_sqrt, p)).add_(self.per_member(o["eps"], p))
            p.sub_(self.per_member(step_size, p) * m / denom)


class StackedAdamW(StackedAdam):
    decoupled = True


class StackedRMSprop(StackedOptimizer):
    graph_safe = True

    @torch.no_grad()
    def step(self, params, lr):
        o = self.options
        for i, p in enumerate(params):
            g = p.grad + self.per_member(o["weight_decay"], p) * p
            alpha = self.per_member(o["alpha"], p)
            sq = self.buffer("square_avg", i, p)
            sq.mul_(alpha).addcmul_(g, g * (1 - alpha))
            avg = sq.sqrt().add_(self.per_member(o["eps"], p))
            buf = self.buffer("momentum", i, p)  # momentum 0: the buffer is g / avg, as without one
            buf.mul_(self.per_member(o["momentum"], p)).add_(g / avg)
            p.sub_(self.per_member(lr, p) * buf)
        self.tick(lr)


class StackedAdagrad(StackedOptimizer):
    graph_safe = True

    @torch.no_grad()
    def step(self, params, lr):
        o = self.options
        for i, p in enumerate(params):
            g = p.grad + self.per_member(o["weight_decay"], p) * p
            total = self.buffer("sum", i, p)
            total.addcmul_(g, g)
            p.sub_(self.per_member(lr, p) * g / total.sqrt().add_(self.per_member(o["eps"], p)))
        self.tick(lr)


@stackable(stacked=StackedSGD)
def sgd(params, *, lr: LearningRate = 0.1, momentum: Coefficient = 0.0, nesterov: bool = False,
        weight_decay: WeightDecay = 0.0) -> torch.optim.Optimizer:
    """SGD, with heavy-ball momentum v = mu*v - lr*g (Polyak 1964) or Nesterov's (Sutskever et al. 2013)."""
    if nesterov and momentum <= 0:
        raise ValueError("sgd: nesterov = true needs momentum > 0")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@stackable(stacked=StackedAdam)
def adam(params, *, lr: LearningRate = 1e-3, beta1: Coefficient = 0.9, beta2: Coefficient = 0.999,
         eps: Epsilon = 1e-8, weight_decay: WeightDecay = 0.0) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015): RMSprop plus momentum, with bias correction."""
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


@stackable(stacked=StackedAdamW)
def adamw(params, *, lr: LearningRate = 1e-3, beta1: Coefficient = 0.9, beta2: Coefficient = 0.999,
          eps: Epsilon = 1e-8, weight_decay: WeightDecay = 1e-2) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay."""
    return torch.optim.AdamW(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


@stackable(stacked=StackedRMSprop)
def rmsprop(params, *, lr: LearningRate = 1e-3, alpha: Coefficient = 0.99, eps: Epsilon = 1e-8,
            momentum: Coefficient = 0.0, weight_decay: WeightDecay = 0.0) -> torch.optim.Optimizer:
    """RMSprop (Tieleman & Hinton 2012): cache = a*cache + (1-a)*g^2; step lr*g/(sqrt(cache)+eps)."""
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)


@stackable(stacked=StackedAdagrad)
def adagrad(params, *, lr: LearningRate = 1e-2, eps: Epsilon = 1e-10,
            weight_decay: WeightDecay = 0.0) -> torch.optim.Optimizer:
    """AdaGrad (Duchi et al. 2011): cache += g^2; step lr*g/(sqrt(cache)+eps)."""
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)
