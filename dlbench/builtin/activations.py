"""Built-in activation functions (each a zero-option or few-option factory of a module)."""

from __future__ import annotations

from typing import Annotated

from torch import nn

from dlbench import Range, hookimpl
from dlbench.stacking import stackable


@hookimpl
def dlbench_register_activations(register):
    for name, factory in [
        ("relu", relu), ("sigmoid", sigmoid), ("tanh", tanh), ("leaky_relu", leaky_relu),
        ("elu", elu), ("gelu", gelu), ("silu", silu), ("softsign", softsign), ("identity", identity),
    ]:
        register(name, stackable(factory))  # elementwise, no state: every one stacks


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
