"""Built-in optimizers: torch.optim with the hyperparameters named as in the course notes."""

from __future__ import annotations

import torch

from dlbench import hookimpl


@hookimpl
def dlbench_register_optimizers(register):
    for name, factory in [("sgd", sgd), ("adam", adam), ("adamw", adamw), ("rmsprop", rmsprop), ("adagrad", adagrad)]:
        register(name, factory)


def sgd(params, *, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False,
        weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD, with heavy-ball momentum v = mu*v - lr*g (Polyak 1964) or Nesterov's (Sutskever et al. 2013)."""
    if nesterov and momentum <= 0:
        raise ValueError("sgd: nesterov = true needs momentum > 0")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def adam(params, *, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015): RMSprop plus momentum, with bias correction."""
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def adamw(params, *, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-2) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay."""
    return torch.optim.AdamW(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def rmsprop(params, *, lr: float = 1e-3, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
            weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """RMSprop (Tieleman & Hinton 2012): cache = a*cache + (1-a)*g^2; step lr*g/(sqrt(cache)+eps)."""
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)


def adagrad(params, *, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdaGrad (Duchi et al. 2011): cache += g^2; step lr*g/(sqrt(cache)+eps)."""
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)
