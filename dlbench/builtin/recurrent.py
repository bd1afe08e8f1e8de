"""Built-in recurrent architectures: RNN, GRU and LSTM reading a 1-D signal as a sequence.

A signal ``(L,)`` is read ``chunk`` values per step: L / chunk steps of ``chunk`` features. Each
layer is one of torch's own modules (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``, one module per layer,
its weights named as torch names them: ``weight_ih_l0``, ``weight_hh_l0``), followed by a norm
slot and a dropout slot applied to every step's output ([B, width]: spatial_dims 0); the logits
come from the last step's output of the last layer. The study's ``activation`` is not used:
torch's cells fix their own nonlinearities (tanh, and the gates' sigmoid; ``rnn`` offers relu).

Not stackable: ``torch.func.vmap`` has no batching rule for torch's fused recurrent kernels.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from dlbench import Range, hookimpl
from dlbench.shapes import accepts
from dlbench.slots import Slot

Width = Annotated[int, Range(ge=1)]
Layers = Annotated[int, Range(ge=1)]
Chunk = Annotated[int, Range(ge=1)]


@hookimpl
def dlbench_register_architectures(register):
    register("rnn", rnn)
    register("gru", gru)
    register("lstm", lstm)


class ToSequence(nn.Module):
    """[B, L] -> [B, L / chunk, chunk]: ``chunk`` consecutive values per step."""

    def __init__(self, chunk: int):
        super().__init__()
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (-1, self.chunk))


class Outputs(nn.Module):
    """A torch recurrent module's per-step outputs [B, T, H] (its final states dropped)."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class PerStep(nn.Module):
    """Applies ``slot`` to each step's [B, H] of a [B, T, H] sequence (as one [B * T, H] batch)."""

    def __init__(self, slot: Slot):
        super().__init__()
        self.slot = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.slot(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class Recurrent(nn.Module):
    """Input slot -> [torch recurrent layer -> norm slot -> dropout slot] x depth -> the last
    step -> Linear to the logits."""

    def __init__(self, layers: list[nn.RNNBase], width: int, num_classes: int, chunk: int, bias: bool):
        super().__init__()
        self.input_slot = Slot("input")
        self.to_sequence = ToSequence(chunk)
        self.layers = nn.ModuleList(nn.Sequential(Outputs(layer), PerStep(Slot("norm", width)),
                                                  PerStep(Slot("hidden", width))) for layer in layers)
        self.head = nn.Linear(width, num_classes, bias=bias)

    @property
    def hidden_blocks(self) -> list[nn.Module]:
        """Each layer with its norm slot, without its dropout slot; the first reads the input
        batch as a sequence. Each maps [B, T, F] to [B, T, width]."""
        return [nn.Sequential(*([self.to_sequence] if i == 0 else []), *layer[:2]) for i, layer in enumerate(self.layers)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_sequence(self.input_slot(x))
        for layer in self.layers:
            x = layer(x)
        return self.head(x[:, -1])


def _build(cell: type[nn.RNNBase], input_shape, num_classes: int, width: int, depth: int, chunk: int, bias: bool,
           **cell_options) -> Recurrent:
    (length,) = input_shape
    if length % chunk:
        divisors = [d for d in range(1, length + 1) if length % d == 0]
        raise ValueError(f"chunk = {chunk} does not divide the signal length {length} into steps; "
                         f"give one of {', '.join(map(str, divisors))}")
    layers = [cell(chunk if i == 0 else width, width, batch_first=True, bias=bias, **cell_options) for i in range(depth)]
    return Recurrent(layers, width, num_classes, chunk, bias)


@accepts(ranks=(1,))
def rnn(input_shape, num_classes, activation, *, width: Width = 64, depth: Layers = 1, chunk: Chunk = 1,
        nonlinearity: Literal["tanh", "relu"] = "tanh", bias: bool = True) -> nn.Module:
    """Elman recurrent network (Elman 1990; torch's ``nn.RNN``) reading a 1-D signal as a sequence.

    h_t = nonlinearity(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh) per layer; the logits are a linear
    map of the last step's h of the last layer. With relu and W_hh the identity (the ``identity``
    initializer) this is Le et al. 2015's IRNN.

    Options: ``width`` hidden units per layer (64), ``depth`` stacked layers (1), ``chunk``
    signal values read per step (1: L steps; must divide L), ``nonlinearity`` "tanh" or "relu",
    ``bias`` true. The study's activation is not used (the cell has its own). Hidden blocks: each
    layer, over [B, T, F].
    """
    return _build(nn.RNN, input_shape, num_classes, width, depth, chunk, bias, nonlinearity=nonlinearity)


@accepts(ranks=(1,))
def gru(input_shape, num_classes, activation, *, width: Width = 64, depth: Layers = 1, chunk: Chunk = 1,
        bias: bool = True) -> nn.Module:
    """Gated recurrent unit network (Cho et al. 2014; torch's ``nn.GRU``) reading a 1-D signal as a sequence.

    Per step: reset gate r = sigmoid(W_ir x + W_hr h), update gate z = sigmoid(W_iz x + W_hz h),
    candidate n = tanh(W_in x + r * (W_hn h)), h' = (1 - z) * n + z * h (biases omitted); the
    logits are a linear map of the last step's h of the last layer.

    Options: ``width`` hidden units per layer (64), ``depth`` stacked layers (1), ``chunk``
    signal values read per step (1: L steps; must divide L), ``bias`` true. The study's activation
    is not used (the cell has its own). Hidden blocks: each layer, over [B, T, F].
    """
    return _build(nn.GRU, input_shape, num_classes, width, depth, chunk, bias)


@accepts(ranks=(1,))
def lstm(input_shape, num_classes, activation, *, width: Width = 64, depth: Layers = 1, chunk: Chunk = 1,
         bias: bool = True) -> nn.Module:
    """Long short-term memory network (Hochreiter & Schmidhuber 1997; torch's ``nn.LSTM``) reading a 1-D signal as a sequence.

    Per step: gates i, f, o = sigmoid(W x + U h + b), candidate g = tanh(W_g x + U_g h + b_g),
    cell c' = f * c + i * g, h' = o * tanh(c'); the logits are a linear map of the last step's h
    of the last layer.

    Options: ``width`` hidden units per layer (64), ``depth`` stacked layers (1), ``chunk``
    signal values read per step (1: L steps; must divide L), ``bias`` true. The study's activation
    is not used (the cell has its own). Hidden blocks: each layer, over [B, T, F].
    """
    return _build(nn.LSTM, input_shape, num_classes, width, depth, chunk, bias)
