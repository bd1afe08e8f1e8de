"""Greedy layer-wise pretraining with stacked (denoising) autoencoders, as an initializer.

Bengio et al. 2007, "Greedy Layer-Wise Training of Deep Networks"; Vincent et al. 2008 for the
denoising variant; Erhan et al. 2010, "Why Does Unsupervised Pre-training Help Deep Learning?".
Each hidden layer in turn is trained, unsupervised, as the encoder of an autoencoder that
reconstructs the layer's input (the previous layer's code of the training set); the decoder is
then thrown away. Supervised training afterwards fine-tunes the whole network.

A hidden block's input and code may be shaped (a convolution's [B, C, L], a recurrent layer's
[B, T, F]): the decoder is a linear map from the flattened code to the flattened input.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from dlbench import Range, hookimpl, stackable
from dlbench.builtin import initializers
from dlbench.slots import hidden_blocks
from dlbench.stacking import stacked_module


@hookimpl
def dlbench_register_initializers(register):
    register("greedy_autoencoder", greedy_autoencoder)


def greedy_autoencoder_stacked(models, data, streams, **options) -> None:
    """:func:`greedy_autoencoder` for several members of a stack at once: at each depth, the
    members' autoencoders train as one model (parameters stacked on a member axis, the forward
    pass vmapped), not member after member.

    Member ``i`` draws inside ``streams.member(i)`` what it draws alone, in the same order (its
    ``then`` initialization, each decoder's init, each epoch's data order, each batch's
    corruption, the forward passes outside the training step), and Adam updates the stacked
    tensors with the member's scalars, elementwise as it would its own. So a member ends where
    it would alone up to the rounding of batched matrix products, except for random draws
    inside a training step's forward pass (dropout in a hidden block), which come from the
    stack's stream.
    """
    bound = inspect.signature(greedy_autoencoder).bind(None, None, **options)  # its options, checked as alone
    bound.apply_defaults()
    options = bound.arguments
    blocks = []
    for i, model in enumerate(models):
        blocks.append(_hidden_blocks(model))
        with streams.member(i):
            getattr(initializers, options["then"])(model, data)
    codes = [data.x_train] * len(models)
    for depth in range(len(blocks[0])):
        codes = _pretrain_layers([b[depth] for b in blocks], codes, streams, options)


@stackable(stacked=greedy_autoencoder_stacked)
def greedy_autoencoder(
    model, data, *,
    epochs: Annotated[int, Range(ge=0)] = 5,
    lr: Annotated[float, Range(gt=0)] = 1e-3,
    batch_size: Annotated[int, Range(ge=1)] = 64,
    corruption: Annotated[float, Range(ge=0, lt=1)] = 0.0,
    then: Literal["default", "xavier", "kaiming"] = "default",
) -> None:
    """Greedy layer-wise pretraining with stacked (denoising) autoencoders (Bengio et al. 2007).

    ``then`` initializes the model first (the output layer keeps it); each hidden layer is then
    pretrained for ``epochs`` on the training split with Adam, minimising the squared error of
    reconstructing its input; ``corruption`` is the fraction of inputs zeroed (Vincent et al. 2008).
    """
    blocks = _hidden_blocks(model)
    getattr(initializers, then)(model, data)

    codes = data.x_train  # the first block takes the input batch as the model receives it
    for block in blocks:
        codes = _pretrain_layer(block, codes, epochs, lr, batch_size, corruption)


def _hidden_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = hidden_blocks(model)
    if blocks is None:
        raise ValueError(f"greedy_autoencoder needs an architecture that exposes hidden_blocks; "
                         f"{type(model).__name__} does not")
    return blocks


def _pretrain_layer(encoder: nn.Module, inputs: torch.Tensor, epochs: int, lr: float,
                    batch_size: int, corruption: float) -> torch.Tensor:
    """Train ``encoder`` + a fresh linear decoder from the flattened code to the flattened input
    to reconstruct ``inputs``; return the codes (as the encoder shapes them)."""
    width = encoder(inputs[:1]).flatten(1).shape[1]
    decoder = nn.Linear(width, inputs[:1].flatten(1).shape[1]).to(inputs.device)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    n = len(inputs)
    for _ in range(epochs):
        for idx in torch.randperm(n, device=inputs.device).split(batch_size):
            target = inputs[idx]
            noisy = target * (torch.rand_like(target) >= corruption) if corruption else target
            loss = F.mse_loss(decoder(encoder(noisy).flatten(1)), target.flatten(1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return encoder(inputs)


class _Autoencoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x).flatten(1))


def _pretrain_layers(encoders: list[nn.Module], inputs: list[torch.Tensor], streams, options: dict) -> list[torch.Tensor]:
    """:func:`_pretrain_layer` of every member at once: ``encoders[i]`` reconstructs
    ``inputs[i]`` (each member's own codes; the first layer's are one shared tensor)."""
    device = inputs[0].device
    autoencoders = []
    for i, encoder in enumerate(encoders):
        with streams.member(i):  # as _pretrain_layer: a probe forward pass, then the decoder's init
            width = encoder(inputs[i][:1]).flatten(1).shape[1]
            decoder = nn.Linear(width, inputs[i][:1].flatten(1).shape[1]).to(device)
        autoencoders.append(_Autoencoder(encoder, decoder))
    params, buffers, _, forward = stacked_module(autoencoders)
    forward = vmap(forward, randomness="different")
    # Adam over the stacked tensors: elementwise, with every member's scalars the same (they share
    # the options), it is each member's own Adam
    opt = torch.optim.Adam(params.values(), lr=options["lr"])
    shared = all(x is inputs[0] for x in inputs)
    stacked = inputs[0] if shared else torch.stack(inputs)
    for _ in range(options["epochs"]):
        for target in streams.epoch_batches(stacked, options["batch_size"], per_member=not shared):  # [N, B, ...]
            noisy = target
            if options["corruption"]:
                draws = [torch.rand(target.shape[1:], device=device, generator=streams.generator(i, device))
                         for i in range(len(encoders))]  # what torch.rand_like(target) draws alone
                noisy = target * (torch.stack(draws) >= options["corruption"])
            reconstruction = forward(params, buffers, noisy)  # [N, B, D]
            loss = F.mse_loss(reconstruction, target.flatten(2), reduction="none").flatten(1).mean(1)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # member i's parameters get the gradient of its own loss
            opt.step()
    codes = []
    with torch.no_grad():
        for i, autoencoder in enumerate(autoencoders):
            for name, p in autoencoder.named_parameters():
                p.copy_(params[name][i])
            with streams.member(i):
                codes.append(encoders[i](inputs[i]))
    return codes
