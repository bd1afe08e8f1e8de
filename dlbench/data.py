"""Datasets as arrays, their on-disk format, the validation split, and the whole dataset as
tensors on the device.

Small datasets are held on the trial's device in full; the training loop draws batches by
indexing with a random permutation made on the device (no DataLoader, no workers, no copies).

On disk (``dlbench data prepare``), one folder per dataset, ``data/<name>/``, holds
``x_train.npy``, ``y_train.npy``, ``x_test.npy``, ``y_test.npy`` (``np.save``: byte-identical
for identical arrays, so a regenerated dataset has the hash ``data.dvc`` recorded) and
``meta.json`` (name, number of classes, the options it was made with, the SHA-256 content hash
of the arrays). Versioning that folder with DVC is ``datastore.py``'s job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlbench.errors import UserError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
VAL_SPLIT_SEED = 0  # the validation split is the same for every trial seed: seeds vary training only


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays as a dataset plugin returns them. ``x`` float, ``y`` int class ids."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def content_hash(self) -> str:
        """SHA-256 over the arrays' dtypes, shapes and bytes: identical data, identical hash."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()


def save_dataset(ds: Dataset, data_dir: Path, options: dict) -> Path:
    folder = Path(data_dir) / ds.name
    folder.mkdir(parents=True, exist_ok=True)
    for key in ARRAYS:
        np.save(folder / f"{key}.npy", np.ascontiguousarray(getattr(ds, key)), allow_pickle=False)
    meta = {"name": ds.name, "num_classes": ds.num_classes, "options": options, "sha256": ds.content_hash(),
            "shapes": {k: list(getattr(ds, k).shape) for k in ARRAYS}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def load_dataset(data_dir: Path, name: str) -> Dataset | None:
    """The prepared dataset ``name`` from ``data_dir``, or None when it was not prepared."""
    folder = Path(data_dir) / name
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        arrays = {k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in ARRAYS}
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: the prepared dataset cannot be read ({exc}); run `dlbench data prepare` "
                        "to write it again") from None
    return Dataset(name=meta["name"], num_classes=int(meta["num_classes"]), **arrays)


@dataclass(frozen=True)
class DeviceData:
    """The splits as tensors on one device, ready for the training loop."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    content_hash: str
    source: str = "generated"  # where the arrays came from: a prepared folder, or generated in memory
    preprocessing: tuple[str, ...] = ()  # what each preprocessing step fitted (dlbench.preprocessing)

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {"train": (self.x_train, self.y_train), "test": (self.x_test, self.y_test)}
        if len(self.y_val):
            out["val"] = (self.x_val, self.y_val)
        return out


def to_device(ds: Dataset, val_fraction: float, device: torch.device, source: str = "generated") -> DeviceData:
    """Carve the validation split from the training set and move everything to ``device``."""
    n = len(ds.y_train)
    order = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
    n_val = int(round(n * val_fraction))
    val, train = order[:n_val], order[n_val:]

    def x(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)

    def y(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long, device=device)

    return DeviceData(
        x_train=x(ds.x_train[train]), y_train=y(ds.y_train[train]),
        x_val=x(ds.x_train[val]), y_val=y(ds.y_train[val]),
        x_test=x(ds.x_test), y_test=y(ds.y_test),
        num_classes=ds.num_classes, input_shape=ds.input_shape, content_hash=ds.content_hash(), source=source,
    )


def options_key(name: str, options: dict) -> str:
    return repr((name, sorted(options.items())))


def check_dataset(name: str, ds) -> None:
    if not isinstance(ds, Dataset):
        raise TypeError(f"dataset plugin {name!r} returned {type(ds).__name__}, expected dlbench.data.Dataset")
    if len(ds.x_train) != len(ds.y_train) or len(ds.x_test) != len(ds.y_test):
        raise ValueError(f"dataset plugin {name!r}: x and y of a split differ in length")
