"""Data augmentation of training batches: 1-D signals (shift, scale, noise) and images (crop,
flip). Vectorized on the batch's device, one random draw per example from the global RNG.

The course material: "We can generate new (x, y) pairs for classification just by transforming
the x inputs in our training set" (Goodfellow et al. 2016, sec. 7.4). Each function below takes
its options per example ([B] tensors), so that a stack (its members' options repeated over their
examples) uses the same code as a trial alone.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from dlbench import Range, hookimpl
from dlbench.regularizer import Regularizer, StackedRegularizer

Fraction = Annotated[float, Range(ge=0, lt=1)]


@hookimpl
def dlbench_register_regularizers(register):
    register("augment_1d", Augment1d)
    register("augment_image", AugmentImage)


def _uniform_int(high: torch.Tensor) -> torch.Tensor:
    """One integer per example, uniform in [0, high] (``high`` a [B] integer tensor)."""
    return (torch.rand(high.shape, device=high.device) * (high + 1)).floor().long().clamp(max=high)


def shift_scale_noise(x: torch.Tensor, max_shift: torch.Tensor, scale: torch.Tensor, noise_std: torch.Tensor,
                      circular: bool) -> torch.Tensor:
    """x [B, L]: x~_i[t] = a_i x_i[t - s_i] + sigma_i eps_it, s_i uniform in {-k_i, ..., k_i},
    a_i uniform in [1 - s_i, 1 + s_i], eps ~ N(0, 1); the shift wraps around (``circular``) or
    fills with zeros."""
    batch, length = x.shape
    shift = _uniform_int(2 * max_shift) - max_shift  # [B]
    source = torch.arange(length, device=x.device) - shift[:, None]  # [B, L]: where x~[t] comes from
    shifted = x.gather(1, source.remainder(length))
    if not circular:
        shifted = shifted * ((source >= 0) & (source < length))
    amplitude = 1 + scale * (2 * torch.rand(batch, device=x.device) - 1)
    return shifted * amplitude[:, None] + noise_std[:, None] * torch.randn_like(x)


def crop_flip(x: torch.Tensor, padding: torch.Tensor, flip_probability: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W]: zero-pad by p_i on every side, cut an H x W window at a uniform offset in
    [0, 2 p_i]^2 (a shift by up to p_i pixels), then mirror left-right with probability q_i."""
    batch, _, height, width = x.shape
    most = int(padding.max())
    padded = F.pad(x, (most, most, most, most))
    low = most - padding  # the window of example i starts in [low_i, low_i + 2 p_i]
    rows = (low + _uniform_int(2 * padding))[:, None] + torch.arange(height, device=x.device)  # [B, H]
    cols = (low + _uniform_int(2 * padding))[:, None] + torch.arange(width, device=x.device)  # [B, W]
    flip = torch.rand(batch, device=x.device) < flip_probability
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    example = torch.arange(batch, device=x.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[example, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return cropped.permute(0, 3, 1, 2)


def _per_example(members, attribute: str, each: int, like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The members' ``attribute``, each repeated over its ``each`` examples: a [N * each] tensor."""
    values = torch.tensor([getattr(m, attribute) for m in members], dtype=dtype, device=like.device)
    return values.repeat_interleave(each)


def _signal_rank_error(shape) -> ValueError:
    return ValueError(f"augment_1d works on 1-D signals (each example of shape (L,)), but this dataset's examples "
                      f"have shape {tuple(shape)}; for images (H, W) or (C, H, W) use augment_image")


class Augment1d(Regularizer):
    """Augmentation of 1-D signals: random shift, amplitude scaling and additive Gaussian noise
    (the course material: "cropping, rotation, noise"; Greydanus 2020 builds MNIST-1D's own
    variation from the same transformations).

    For each training example independently: x~[t] = a x[t - s] + sigma eps_t, with the shift s
    uniform in {-max_shift, ..., max_shift} (``padding`` "circular": the signal wraps around;
    "zeros": what is shifted in is 0), the amplitude a uniform in [1 - scale, 1 + scale] and
    eps_t ~ N(0, 1). Options: ``max_shift`` (default 3 samples), ``padding`` (default
    "circular"), ``scale`` (default 0.1), ``noise_std`` (default 0.05). Training batches only,
    examples of shape (L,). Stacks: options per member, each member its own draws.
    """

    def __init__(self, *, max_shift: Annotated[int, Range(ge=0)] = 3,
                 padding: Literal["circular", "zeros"] = "circular", scale: Fraction = 0.1,
                 noise_std: Annotated[float, Range(ge=0)] = 0.05):
        self.max_shift, self.padding, self.scale, self.noise_std = max_shift, padding, scale, noise_std

    def transform_batch(self, x, y):
        if x.dim() != 2:
            raise _signal_rank_error(x.shape[1:])
        return StackedAugment1d([self]).transform_batch(x[None], y[None])[0][0], y

    @classmethod
    def stacked(cls, members):
        return StackedAugment1d(members)


class StackedAugment1d(StackedRegularizer):
    def transform_batch(self, x, y):  # x [N, B, L]
        if x.dim() != 3:
            raise _signal_rank_error(x.shape[2:])
        n, b, length = x.shape
        options = {k: _per_example(self.members, k, b, x) for k in ("scale", "noise_std")}
        max_shift = _per_example(self.members, "max_shift", b, x, torch.long)
        out = shift_scale_noise(x.reshape(n * b, length), max_shift, options["scale"], options["noise_std"],
                                circular=self.members[0].padding == "circular")
        return out.view(n, b, length), y


class AugmentImage(Regularizer):
    """Image augmentation: random crop with zero padding and horizontal flip (Krizhevsky et al.
    2012; He et al. 2016's CIFAR-10 recipe: pad 4, crop 32 x 32, flip; the course material:
    "cropping, rotation, noise").

    For each training example independently: zero-pad by ``padding`` pixels on every side and
    cut a window of the original size at a uniform random offset (a translation by up to
    ``padding`` pixels in each direction), then mirror it left-right with probability
    ``flip_probability``. Options: ``padding`` (default 4), ``flip_probability`` (default 0.5;
    0 for digits, whose mirror images are other shapes). Training batches only, examples of
    shape (H, W) or (C, H, W). Stacks: options per member, each member its own draws.
    """

    def __init__(self, *, padding: Annotated[int, Range(ge=0)] = 4,
                 flip_probability: Annotated[float, Range(ge=0, le=1)] = 0.5):
        self.padding, self.flip_probability = padding, flip_probability

    def transform_batch(self, x, y):
        return StackedAugmentImage([self]).transform_batch(x[None], y[None])[0][0], y

    @classmethod
    def stacked(cls, members):
        return StackedAugmentImage(members)


class StackedAugmentImage(StackedRegularizer):
    def transform_batch(self, x, y):  # x [N, B, H, W] or [N, B, C, H, W]
        if x.dim() not in (4, 5):
            raise ValueError(f"augment_image works on images (each example of shape (H, W) or (C, H, W)), but this "
                             f"dataset's examples have shape {tuple(x.shape[2:])}"
                             + ("; for 1-D signals use augment_1d" if x.dim() == 3 else ""))
        n, b = x.shape[:2]
        images = x.reshape(n * b, -1, *x.shape[-2:])  # [N * B, C, H, W], C = 1 for (H, W)
        out = crop_flip(images, _per_example(self.members, "padding", b, x, torch.long),
                        _per_example(self.members, "flip_probability", b, x))
        return out.view(x.shape), y
