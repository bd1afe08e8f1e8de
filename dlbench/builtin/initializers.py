"""Built-in parameter initializers. Each sets every Linear/Conv weight (and the input and
recurrent weights of RNN/GRU/LSTM layers), biases to 0; ``lsuv`` also looks at a batch of data.

Formulas follow the course notes (seeds: "Random Parameter Initializations") and the papers named
in each docstring; ``default`` keeps PyTorch's own init as the control.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Annotated, Literal

import torch
from torch import nn

from dlbench import Range, hookimpl

Positive = Annotated[float, Range(gt=0)]


@hookimpl
def dlbench_register_initializers(register):
    for name, factory in [
        ("default", default), ("xavier", xavier), ("kaiming", kaiming), ("lecun", lecun),
        ("normal", normal), ("uniform", uniform), ("orthogonal", orthogonal),
        ("zeros", zeros), ("constant", constant), ("identity", identity), ("lsuv", lsuv),
    ]:
        register(name, factory)


LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _layers(model: nn.Module) -> Iterator[nn.Module]:
    for m in model.modules():
        if isinstance(m, LAYERS):
            yield m


def _weights_and_biases(model: nn.Module) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Each weight an initializer sets, with the biases that go with it: a Linear/Conv layer's
    weight, and each input (``weight_ih_l<k>``) and recurrent (``weight_hh_l<k>``) matrix of an
    RNN/GRU/LSTM layer (its biases come with the input matrix)."""
    for m in model.modules():
        if isinstance(m, LAYERS):
            yield m.weight, [m.bias] if m.bias is not None else []
        elif isinstance(m, nn.RNNBase):
            for name, weight in m.named_parameters():
                if name.startswith("weight_"):
                    biases = [getattr(m, name.replace("weight_ih", b)) for b in ("bias_ih", "bias_hh")
                              if name.startswith("weight_ih") and hasattr(m, name.replace("weight_ih", b))]
                    yield weight, biases


@torch.no_grad()
def _apply(model: nn.Module, init_weight: Callable[[torch.Tensor], None]) -> None:
    for weight, biases in _weights_and_biases(model):
        init_weight(weight)
        for bias in biases:
            bias.zero_()


def default(model, data) -> None:
    """PyTorch's default init (Kaiming-uniform with a=sqrt(5), fan-in bias): left as built."""


def xavier(model, data, *, distribution: Literal["uniform", "normal"] = "uniform", gain: Positive = 1.0) -> None:
    """Xavier/Glorot (Glorot & Bengio 2010): Var(W) = 2 / (fan_in + fan_out), times gain^2.

    Uniform: W ~ U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)).
    """
    fn = nn.init.xavier_uniform_ if distribution == "uniform" else nn.init.xavier_normal_
    _apply(model, lambda w: fn(w, gain=gain))


def kaiming(
    model, data, *,
    distribution: Literal["uniform", "normal"] = "normal",
    mode: Literal["fan_in", "fan_out"] = "fan_in",
    nonlinearity: Literal["relu", "leaky_relu", "linear", "tanh", "sigmoid"] = "relu",
) -> None:
    """Kaiming/He (He et al. 2015): Var(W) = gain^2 / fan, gain = sqrt(2) for ReLU."""
    fn = nn.init.kaiming_uniform_ if distribution == "uniform" else nn.init.kaiming_normal_
    _apply(model, lambda w: fn(w, mode=mode, nonlinearity=nonlinearity))


def lecun(model, data, *, distribution: Literal["uniform", "normal"] = "normal") -> None:
    """LeCun (LeCun et al. 1998, "Efficient BackProp"): Var(W) = 1 / fan_in."""
    fn = nn.init.kaiming_uniform_ if distribution == "uniform" else nn.init.kaiming_normal_
    _apply(model, lambda w: fn(w, mode="fan_in", nonlinearity="linear"))


def normal(model, data, *, std: Positive = 0.01) -> None:
    """Small Gaussian: W ~ N(0, std^2), the classical scheme of the course notes."""
    _apply(model, lambda w: nn.init.normal_(w, 0.0, std))


def uniform(model, data, *, a: Positive = 0.05) -> None:
    """Small uniform: W ~ U(-a, a), the classical scheme of the course notes."""
    _apply(model, lambda w: nn.init.uniform_(w, -a, a))


def orthogonal(model, data, *, gain: Positive = 1.0) -> None:
    """Orthogonal (Saxe et al. 2014): W from the QR/SVD of a Gaussian matrix, scaled by gain."""
    _apply(model, lambda w: nn.init.orthogonal_(w, gain=gain))



def zeros(model, data) -> None:
    """Every weight and bias 0: the symmetry problem (course material: "what happens when W=0 init
    is used?"), a negative control.

    Every unit of a layer computes the same output, receives the same gradient and takes the same
    update, so the units of a layer stay identical copies of each other for ever: the network has
    the capacity of one unit per layer. With ReLU, the hidden layers' gradients are exactly 0 and
    only the output bias learns.
    """
    _apply(model, nn.init.zeros_)


def constant(model, data, *, value: Annotated[float, Range(ge=-10, le=10)] = 0.01) -> None:
    """Every weight ``value``, biases 0: the symmetry problem of ``zeros`` without its zero outputs.

    All units of a layer start equal and stay equal (same output, same gradient, same update):
    a negative control showing that initialization must break symmetry (random weights do).
    """
    _apply(model, lambda w: nn.init.constant_(w, value))


def identity(model, data, *, gain: Annotated[float, Range(gt=0, le=10)] = 1.0,
             then: Literal["default", "xavier", "kaiming", "orthogonal"] = "xavier") -> None:
    """Identity initialization (Le et al. 2015, "IRNN"; course material: "identity initialization
    for RNNs"): recurrent weights W_hh = gain * I.

    ``then`` (default xavier) initializes the model first; then each recurrent matrix ``weight_hh_l<k>`` of an
    RNN/GRU/LSTM layer is set to ``gain`` times the identity (per gate block for GRU and LSTM:
    each gate starts by carrying its state over) and its biases to 0, and every square Linear
    weight (a residual or highway block's) to the identity. A state then persists through time
    (and depth) at the start of training instead of vanishing or exploding.
    """
    globals()[then](model, data)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.RNNBase):
                for name, weight in m.named_parameters():
                    if name.startswith("weight_hh"):
                        size = weight.shape[1]
                        weight.copy_(gain * torch.eye(size, device=weight.device).repeat(weight.shape[0] // size, 1))
                    elif name.startswith("bias_hh"):
                        weight.zero_()
            elif isinstance(m, nn.Linear) and m.weight.shape[0] == m.weight.shape[1]:
                m.weight.copy_(gain * torch.eye(m.weight.shape[0], device=m.weight.device))


def lsuv(model, data, *, tolerance: Annotated[float, Range(gt=0, lt=1)] = 0.1,
         max_iterations: Annotated[int, Range(ge=1)] = 10,
         batch_size: Annotated[int, Range(ge=2)] = 512) -> None:
    """Layer-sequential unit-variance initialization (Mishkin & Matas 2016, "All you need is a good init").

    Orthonormal initialization first (Saxe et al. 2014); then, for each Linear/Conv layer in
    forward order, the first ``batch_size`` training examples are passed through the model and the
    layer's weights divided by sqrt(Var(output)) until |Var(output) - 1| < ``tolerance`` (at most
    ``max_iterations`` times per layer). Biases 0. Recurrent layers keep the orthonormal init.
    The model is evaluated in eval mode (no dropout) and left in the mode it was in.
    """
    orthogonal(model, data)
    batch = data.x_train[:batch_size]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for layer in _layers(model):
                seen: list[torch.Tensor] = []
                handle = layer.register_forward_hook(lambda mod, args, out: seen.append(out))
                try:
                    for _ in range(max_iterations):
                        seen.clear()
                        model(batch)
                        if not seen:
                            break  # a layer the forward pass does not use
                        variance = seen[0].float().var().item()
                        if not math.isfinite(variance) or variance == 0 or abs(variance - 1) < tolerance:
                            break
                        layer.weight.div_(math.sqrt(variance))
                finally:
                    handle.remove()
    finally:
        model.train(was_training)
