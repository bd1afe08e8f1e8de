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

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dlbench import Range, hookimpl
from dlbench.builtin import initializers


@hookimpl
def dlbench_register_initializers(register):
    register("greedy_autoencoder", greedy_autoencoder)


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
    blocks = getattr(model, "hidden_blocks", None)
    if blocks is None:
        raise ValueError(f"greedy_autoencoder needs an architecture that exposes hidden_blocks; "
                         f"{type(model).__name__} does not")
    getattr(initializers, then)(model, data)

    codes = data.x_train  # the first block takes the input batch as the model receives it
    for block in blocks:
        codes = _pretrain_layer(block, codes, epochs, lr, batch_size, corruption)


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
