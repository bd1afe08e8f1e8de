"""Built-in preprocessing: centering, standardization, PCA and ZCA whitening.

Each is fitted on the training split only and applied to every split (``dlbench/preprocessing.py``).
The formulas are the course material's (CS231n, "Data Preprocessing"): ``X`` is the ``N x D``
training matrix, one example per row (an image flattened), ``cov = X^T X / N`` after centering.
Statistics are computed in float64 and applied in float32.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from dlbench import Range, hookimpl
from dlbench.preprocessing import Preprocessor

Epsilon = Annotated[float, Range(ge=0)]


@hookimpl
def dlbench_register_preprocessing(register):
    for name, factory in [("center", Center), ("standardize", Standardize), ("pca", PCA), ("zca", ZCA)]:
        register(name, factory)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[N, *shape]`` -> ``[N, D]`` float64, one flattened example per row."""
    return x.reshape(len(x), -1).double()


def _eigen(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, eigenvalues (descending) and eigenvectors (columns) of the training covariance
    ``cov = Xc^T Xc / N`` (``Xc`` centered), in float64. ``cov`` is symmetric, so its SVD
    ``U, S, V = svd(cov)`` is its eigendecomposition; each eigenvector's sign is fixed (its
    largest entry positive) so that the fit is the same on every device."""
    rows = _rows(x)
    mean = rows.mean(0)
    centered = rows - mean
    cov = centered.T @ centered / len(rows)
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)  # descending; rounding gives -1e-17
    biggest = vectors.abs().argmax(0)
    vectors = vectors * vectors[biggest, torch.arange(vectors.shape[1], device=vectors.device)].sign()
    return mean, values, vectors


class Center(Preprocessor):
    """Mean subtraction (CS231n, course material): subtract the training mean.

    ``per = "feature"``: x - mean over the training examples of each feature (the mean image,
    as AlexNet). ``per = "channel"``: x - mean of each channel over the examples and positions
    (as VGGNet; 3 numbers for CIFAR-10); an example of other than 3 dimensions ``(C, H, W)``
    is one channel. Keeps the shape.
    """

    def __init__(self, *, per: Literal["feature", "channel"] = "feature"):
        self.per = per

    def fit(self, x: torch.Tensor) -> None:
        if self.per == "feature":
            self.mean = x.double().mean(0).float()
        elif x.dim() == 4:  # [N, C, H, W]
            self.mean = x.double().mean((0, 2, 3)).float()[:, None, None]
        else:
            self.mean = x.double().mean().float()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean

    def describe(self) -> str:
        return f"subtracted the mean of each {self.per} ({self.mean.numel()} values)"


class Standardize(Preprocessor):
    """Standardization (CS231n, course material): (x - mean) / std per feature, on the training split.

    ``mean`` and ``std`` are each feature's over the training examples (``std`` the population
    standard deviation, divided by N); a feature of zero std on the training split (a border
    pixel always 0) is only centered. Keeps the shape.
    """

    def fit(self, x: torch.Tensor) -> None:
        rows = x.double()
        self.mean = rows.mean(0)
        std = rows.std(0, correction=0)
        self.constant = int((std == 0).sum())
        self.std = torch.where(std == 0, torch.ones_like(std), std)
        self.mean, self.std = self.mean.float(), self.std.float()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def describe(self) -> str:
        n = self.mean.numel()
        return f"{n} features to mean 0, std 1" + (f" ({self.constant} constant: centered only)" if self.constant else "")


class PCA(Preprocessor):
    """PCA (CS231n, course material): project the centered data onto the principal components.

    ``cov = Xc^T Xc / N``, ``U, S, V = svd(cov)``, ``x_rot = (x - mean) U[:, :k]``: the output
    is ``(k,)`` whatever the input's shape. ``k`` is ``components``, or the fewest components
    keeping at least ``variance`` of the total variance (sum of the kept eigenvalues over the sum
    of all), or all ``D`` components (a decorrelating rotation) when neither is given.
    ``whiten = true`` divides each component by ``sqrt(lambda + eps)``: unit variance on the
    training split (``eps`` keeps components of near-zero variance from being blown up).
    """

    def __init__(self, *, components: Annotated[int, Range(ge=1)] | None = None,
                 variance: Annotated[float, Range(gt=0, le=1)] | None = None,
                 whiten: bool = False, eps: Epsilon = 1e-5):
        if components is not None and variance is not None:
            raise ValueError(f"give 'components' ({components}) or 'variance' ({variance}), not both")
        self.components, self.variance, self.whiten, self.eps = components, variance, whiten, eps

    def fit(self, x: torch.Tensor) -> None:
        mean, values, vectors = _eigen(x)
        features = len(values)
        if self.components is not None and self.components > features:
            raise ValueError(f"components = {self.components} is more than the {features} features of an example "
                             f"(input shape {tuple(x.shape[1:])}); choose at most {features}, or 'variance' instead")
        total = values.sum()
        if self.components is not None:
            k = self.components
        elif self.variance is not None and total > 0:
            kept = values.cumsum(0) / total
            k = int((kept < self.variance - 1e-12).sum()) + 1
        else:
            k = features
        self.kept = float(values[:k].sum() / total) if total > 0 else 1.0
        self.k, self.features = min(k, features), features
        basis = vectors[:, :self.k]
        if self.whiten:
            basis = basis / (values[:self.k] + self.eps).sqrt()
        self.mean, self.basis = mean.float(), basis.float()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1) - self.mean) @ self.basis

    def describe(self) -> str:
        whitened = f", whitened (eps {self.eps:g})" if self.whiten else ""
        return f"{self.k} of {self.features} components, {100 * self.kept:.1f}% of variance{whitened}"


class ZCA(Preprocessor):
    """ZCA whitening (Bell & Sejnowski 1997; CS231n, course material): decorrelate, unit variance, same shape.

    ``W = U diag(1 / sqrt(lambda + eps)) U^T`` with ``U``, ``lambda`` the eigenvectors and
    eigenvalues of ``cov = Xc^T Xc / N``; ``x_zca = (x - mean) W``, reshaped to the input's
    shape. The training covariance becomes ``U diag(lambda / (lambda + eps)) U^T``: the identity
    up to ``eps``. Of all whitening transforms ZCA stays closest to the input (images still
    look like images). ``eps`` keeps directions of near-zero variance (noise) from being blown
    up; for images, 1e-2 to 1e-1 is common.
    """

    def __init__(self, *, eps: Epsilon = 1e-5):
        self.eps = eps

    def fit(self, x: torch.Tensor) -> None:
        mean, values, vectors = _eigen(x)
        self.values = values
        self.mean = mean.float()
        self.w = (vectors / (values + self.eps).sqrt() @ vectors.T).float()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.reshape(len(x), -1) - self.mean) @ self.w).reshape(x.shape)

    def describe(self) -> str:
        return (f"{len(self.values)} features whitened, eigenvalues {float(self.values[-1]):.3g} to "
                f"{float(self.values[0]):.3g} (eps {self.eps:g})")
