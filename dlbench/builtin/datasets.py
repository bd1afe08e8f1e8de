"""Built-in datasets, all generated or shipped offline: nothing is downloaded at run time."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from dlbench import Range, hookimpl
from dlbench.data import Dataset

Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]  # NumPy's seeds are 32-bit
Scale = Annotated[float, Range(ge=0)]


@hookimpl
def dlbench_register_datasets(register):
    register("mnist1d", mnist1d)
    register("digits", digits)


def mnist1d(
    *,
    num_samples: Annotated[int, Range(ge=10)] = 5000,  # one example of each class at least
    train_split: Annotated[float, Range(gt=0, lt=1)] = 0.8,
    seed: Seed = 42,
    iid_noise_scale: Scale = 2e-2,
    corr_noise_scale: Scale = 0.25,
    shear_scale: Scale = 0.75,
) -> Dataset:
    """MNIST-1D (Greydanus 2020): 10 classes of length-40 1-D signals, generated offline.

    With the defaults this is the reference dataset of the ``mnist1d`` package: 4000 train and
    1000 test examples. Small enough to train hundreds of MLPs on a laptop, yet it separates
    architectures and regularizers much more clearly than MNIST does.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    args.iid_noise_scale, args.corr_noise_scale, args.shear_scale = iid_noise_scale, corr_noise_scale, shear_scale
    d = make_dataset(args)
    return Dataset(
        name="mnist1d",
        x_train=d["x"].astype(np.float32), y_train=d["y"].astype(np.int64),
        x_test=d["x_test"].astype(np.float32), y_test=d["y_test"].astype(np.int64),
        num_classes=10,
    )


def digits(*, test_fraction: Annotated[float, Range(ge=0.01, le=0.99)] = 0.2, seed: Seed = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, UCI), pixels scaled to [0, 1].

    Shipped inside scikit-learn, so it needs no download. The test split is stratified.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset("digits", x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), num_classes=10)
