"""MNIST, Fashion-MNIST and CIFAR-10 read from local files in torchvision's layout.

The files are parsed with NumPy (IDX for MNIST and Fashion-MNIST, CIFAR-10's pickled batches),
so torchvision is not needed to read them. It is needed only to fetch them (``download = true``:
``pip install 'dlbench[vision]'``), which ``torchvision.datasets.MNIST(root, download=True)``
does into the same layout::

    <root>/MNIST/raw/train-images-idx3-ubyte         (or .gz)  train-labels-idx1-ubyte
    <root>/MNIST/raw/t10k-images-idx3-ubyte                   t10k-labels-idx1-ubyte
    <root>/FashionMNIST/raw/...                      (the same four names)
    <root>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch

``root`` defaults to ``data/torchvision`` (relative to the directory dlbench runs in). Images
are float32 in [0, 1]: grayscale ``(28, 28)``, colour channels-first ``(3, 32, 32)``; labels
int64. ``limit`` keeps the first ``limit`` examples of each split, for quick studies.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Annotated

import numpy as np

from dlbench import Range, hookimpl
from dlbench.data import Dataset
from dlbench.errors import UserError

DEFAULT_ROOT = "data/torchvision"
Limit = Annotated[int, Range(ge=1)] | None
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@hookimpl
def dlbench_register_datasets(register):
    register("mnist", mnist)
    register("fashion_mnist", fashion_mnist)
    register("cifar10", cifar10)


def mnist(*, root: str = DEFAULT_ROOT, download: bool = False, limit: Limit = None) -> Dataset:
    """MNIST (LeCun et al. 1998): 70,000 28x28 grayscale digits, 10 classes, from local IDX files.

    Reads ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (torchvision's
    layout): 60,000 train and 10,000 test images as float32 in [0, 1], shape ``(28, 28)``.
    ``download = true`` fetches them with torchvision (``pip install 'dlbench[vision]'``);
    ``limit``: the first ``limit`` examples of each split.
    """
    return _idx_dataset("mnist", "MNIST", root, download, limit)


def fashion_mnist(*, root: str = DEFAULT_ROOT, download: bool = False, limit: Limit = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 70,000 28x28 grayscale clothing images, 10 classes, local IDX files.

    Reads ``<root>/FashionMNIST/raw/`` with MNIST's four file names (torchvision's layout):
    60,000 train and 10,000 test images as float32 in [0, 1], shape ``(28, 28)``.
    ``download = true`` fetches them with torchvision (``pip install 'dlbench[vision]'``);
    ``limit``: the first ``limit`` examples of each split.
    """
    return _idx_dataset("fashion_mnist", "FashionMNIST", root, download, limit)


def cifar10(*, root: str = DEFAULT_ROOT, download: bool = False, limit: Limit = None) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 60,000 32x32 colour images, 10 classes, from the local Python batches.

    Reads ``<root>/cifar-10-batches-py/data_batch_1`` to ``_5`` and ``test_batch`` (the
    "python version" archive, torchvision's layout): 50,000 train and 10,000 test images as
    float32 in [0, 1], channels-first ``(3, 32, 32)``. ``download = true`` fetches them with
    torchvision (``pip install 'dlbench[vision]'``); ``limit``: the first ``limit`` of each split.
    """
    folder = Path(root) / CIFAR_FOLDER
    if download:
        _download("CIFAR10", "cifar10", root)
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise _missing("cifar10", folder, missing, CIFAR_FILES, "torchvision.datasets.CIFAR10", root)
    splits = {"train": [_cifar_batch(folder / name) for name in CIFAR_FILES[:-1]],
              "test": [_cifar_batch(folder / CIFAR_FILES[-1])]}
    arrays = {}
    for split, batches in splits.items():
        x = np.concatenate([b[0] for b in batches])[:limit]
        arrays[f"x_{split}"] = (x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        arrays[f"y_{split}"] = np.concatenate([b[1] for b in batches])[:limit]
    return Dataset("cifar10", num_classes=10, **arrays)


# -- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------------


def _idx_dataset(name: str, folder_name: str, root: str, download: bool, limit: int | None) -> Dataset:
    folder = Path(root) / folder_name / "raw"
    if download:
        _download(folder_name, name, root)
    wanted = [f for pair in IDX_FILES.values() for f in pair]
    missing = [f for f in wanted if _idx_path(folder, f) is None]
    if missing:
        raise _missing(name, folder, missing, wanted, f"torchvision.datasets.{folder_name}", root, gz=True)
    arrays = {}
    for split, (images, labels) in IDX_FILES.items():
        x, y = read_idx(_idx_path(folder, images)), read_idx(_idx_path(folder, labels))
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"dataset {name!r}: {folder} holds {split} images of shape {x.shape} and labels of "
                            f"shape {y.shape}; expected [N, 28, 28] images and N labels")
        if y.size and y.max() > 9:
            raise UserError(f"dataset {name!r}: {_idx_path(folder, labels)} holds label {int(y.max())}; "
                            "expected the classes 0 to 9")
        arrays[f"x_{split}"] = x[:limit].astype(np.float32) / 255.0
        arrays[f"y_{split}"] = y[:limit].astype(np.int64)
    return Dataset(name, num_classes=10, **arrays)


def _idx_path(folder: Path, name: str) -> Path | None:
    """``folder/name``, or ``folder/name.gz``, whichever exists (torchvision keeps both)."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format of MNIST): magic ``0 0 <type> <ndim>``, ``ndim`` big-endian
    int32 sizes, then the values row-major. Gzipped when the name ends in ``.gz``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot be read ({exc}); download or copy it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise UserError(f"{path}: not an IDX file (it does not start with the magic number 0 0 <type> <ndim>); "
                        "download or copy it again")
    ndim = raw[3]
    dtype = np.dtype(IDX_TYPES[raw[2]])
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4)) if len(raw) >= 4 + 4 * ndim else None
    expected = 4 + 4 * ndim + (int(np.prod(shape)) * dtype.itemsize if shape else 0)
    if shape is None or len(raw) != expected:
        raise UserError(f"{path}: truncated or corrupt IDX file ({len(raw)} bytes, the header says {expected}); "
                        "download or copy it again")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape)


# -- CIFAR-10 -------------------------------------------------------------------------------------


class _ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays, dicts, lists and strings only: a batch file cannot run code."""

    def find_class(self, module: str, name: str):
        numpy = module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar")
        if numpy or (module, name) == ("_codecs", "encode"):  # Python 3's protocol-2 bytes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 3072] uint8, labels [N] int64) of one batch: a pickled dict with ``data`` and
    ``labels`` (bytes keys, as the original files are Python 2 pickles)."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        x = np.asarray(batch["data"], dtype=np.uint8)
        y = np.asarray(batch["labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a CIFAR-10 batch (a pickled dict of 'data' and 'labels'): "
                        f"{type(exc).__name__}: {exc}; download or copy it again") from None
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y) or (y.size and not 0 <= y.min() <= y.max() <= 9):
        raise UserError(f"{path}: expected N x 3072 uint8 images and N labels from 0 to 9, got images {x.shape} "
                        f"and {len(y)} labels")
    return x, y


# -- getting the files ----------------------------------------------------------------------------


def _download(cls_name: str, name: str, root: str) -> None:
    """Fetch both splits with ``torchvision.datasets.<cls_name>(root, download=True)``."""
    try:
        import torchvision
    except ImportError:
        raise UserError(f"dataset {name!r}: download = true fetches the files with torchvision, which is not "
                        "installed: `pip install 'dlbench[vision]'` (a torchvision built for your torch), or copy "
                        f"the files into {root} yourself and leave download out") from None
    for train in (True, False):
        getattr(torchvision.datasets, cls_name)(root, train=train, download=True)


def _missing(name: str, folder: Path, missing: list[str], wanted: list[str], tv: str, root: str,
             gz: bool = False) -> UserError:
    files = ", ".join(wanted) + (" (each may be gzipped, .gz)" if gz else "")
    which = "none of its files" if len(missing) == len(wanted) else f"not all of its files (missing: {', '.join(missing)})"
    return UserError(
        f"dataset {name!r}: {folder} holds {which}. It reads {files} from there, the layout of {tv}. Get them either with download = true in the dataset table "
        f"(dataset = {{ name = \"{name}\", download = true }}; needs `pip install 'dlbench[vision]'`), or by "
        f"copying the files there; root = \"...\" reads them from another folder (now {root!r}).")
