"""Built-in activation functions (each a zero-option or few-option factory of a module)."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from dlbench import Range, hookimpl
from dlbench.stacking import stackable


@hookimpl
def dlbench_register_activations(register):
    for name, factory in [
        ("relu", relu), ("sigmoid", sigmoid), ("tanh", tanh), ("leaky_relu", leaky_relu),
        ("elu", elu), ("gelu", gelu), ("silu", silu), ("softsign", softsign), ("identity", identity),
        ("prelu", prelu), ("step", step),
    ]:
        register(name, stackable(factory))  # elementwise (PReLU: one learned parameter): every one stacks


def relu() -> nn.Module:
    """Rectified linear unit max(0, x) (Nair & Hinton 2010): sparse, non-saturating for x > 0."""
    return nn.ReLU()


def sigmoid() -> nn.Module:
    """Logistic sigmoid 1 / (1 + e^-x): saturates at 0 and 1, gradients vanish with depth."""
    return nn.Sigmoid()


def tanh() -> nn.Module:
    """Hyperbolic tangent 2*sigmoid(2x) - 1: zero-centred, saturates at -1 and 1."""
    return nn.Tanh()


def leaky_relu(*, negative_slope: Annotated[float, Range(ge=0, le=1)] = 0.01) -> nn.Module:
    """Leaky ReLU max(x, a*x) (Maas et al. 2013): no dead units."""
    return nn.LeakyReLU(negative_slope)


def elu(*, alpha: Annotated[float, Range(ge=0)] = 1.0) -> nn.Module:
    """Exponential linear unit (Clevert et al. 2016): x for x > 0, a*(e^x - 1) otherwise."""
    return nn.ELU(alpha)


def gelu() -> nn.Module:
    """Gaussian error linear unit x*Phi(x) (Hendrycks & Gimpel 2016)."""
    return nn.GELU()


def silu() -> nn.Module:
    """SiLU / swish x*sigmoid(x) (Elfwing et al. 2018; Ramachandran et al. 2017)."""
    return nn.SiLU()


def softsign() -> nn.Module:
    """Softsign x / (1 + |x|) (Bergstra et al. 2009): saturates polynomially, not exponentially."""
    return nn.Softsign()


def identity() -> nn.Module:
    """No nonlinearity: a deep linear network, the control case for depth studies."""
    return nn.Identity()


def prelu(*, init: Annotated[float, Range(ge=0, le=1)] = 0.25) -> nn.Module:
    """Parametric ReLU max(0, x) + a*min(0, x) with a learned slope a (He et al. 2015).

    Leaky ReLU whose negative slope is a parameter trained with the weights (course material:
    "learn the slope of the activation function"). One slope per layer, starting at ``init``
    (default 0.25, the paper's); weight decay penalties leave it alone (it is not a weight matrix).
    """
    return nn.PReLU(num_parameters=1, init=init)


class HeavisideFunction(torch.autograd.Function):
    """H(x) = 1 if x > 0 else 0, with the derivative it has almost everywhere: 0. Written in
    the torch.func style (separate ``setup_context``), so ``vmap`` batches it in a stack."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grad)


class Step(nn.Module):
    """The Heaviside step as a module (see :func:`step`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return HeavisideFunction.apply(x)


def step() -> nn.Module:
    """Heaviside step H(x) = 1 for x > 0, else 0: the perceptron's threshold unit, a negative control.

    Its derivative is 0 wherever it exists, so backpropagation sends exactly zero gradient to
    every layer below a step unit: gradient descent trains only the output layer (a linear model
    on fixed random binary features). The report's per-layer gradient-norm figure shows those
    layers at exactly 0. This is why differentiable activations (sigmoid, tanh, ReLU) replaced the
    step in multilayer networks (Rumelhart et al. 1986).
    """
    return Step()
