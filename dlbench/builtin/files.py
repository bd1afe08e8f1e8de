"""The user's own data: arrays from a ``.npz`` file, or a table from CSV files.

Paths are relative to the directory dlbench runs in. Inputs become float32 (they must be
numbers). Labels: non-negative integers are the class ids as they are (``num_classes`` is the
largest plus one); any other labels (text such as ``cat``, ``dog``) are mapped to 0..K-1 in
sorted order of their distinct values over both splits. Negative or fractional numbers are an
error. Where no test split is given, ``test_fraction`` of the examples (a seeded permutation)
are held out as the test split.
"""

from __future__ import annotations

import csv as csvlib
import zipfile
from pathlib import Path
from typing import Annotated

import numpy as np

from dlbench import Length, Range, hookimpl
from dlbench.data import Dataset
from dlbench.errors import UserError

Fraction = Annotated[float, Range(gt=0, lt=1)]
Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]
NPZ_SPLIT = ("x_train", "y_train", "x_test", "y_test")


@hookimpl
def dlbench_register_datasets(register):
    register("npz", npz)
    register("csv", csv)


def npz(*, path: Annotated[str, Length(min=1)], test_fraction: Fraction = 0.2, seed: Seed = 0) -> Dataset:
    """Arrays from a NumPy ``.npz`` file of your own: x_train, y_train, x_test, y_test, or x and y.

    ``path``: the file (``np.savez``). With ``x_train``, ``y_train``, ``x_test``, ``y_test`` the
    splits are used as they are; with only ``x`` and ``y``, ``test_fraction`` of the examples
    (permutation seeded by ``seed``) become the test split. ``x``: one example per row, any
    shape per example (``(L,)``, ``(H, W)``, ``(C, H, W)``), numbers. Labels: see the module.
    """
    file = _existing(path, "npz")
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"dataset 'npz': {file} cannot be read as an .npz file of arrays ({exc}); write it with "
                        "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) (or x=..., y=...)") from None
    if all(key in arrays for key in NPZ_SPLIT):
        x_train, y_train, x_test, y_test = (arrays[key] for key in NPZ_SPLIT)
    elif "x" in arrays and "y" in arrays:
        x_train, y_train, x_test, y_test = _split(arrays["x"], arrays["y"], test_fraction, seed, f"{file}")
    else:
        raise UserError(f"dataset 'npz': {file} holds the arrays {', '.join(sorted(arrays)) or '(none)'}; it needs "
                        "x_train, y_train, x_test and y_test, or x and y (then test_fraction of them is the test split)")
    for key, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise UserError(f"dataset 'npz': {file}: x_{key} has {len(x)} examples but y_{key} {len(y)} labels")
    y_train, y_test, num_classes = class_ids(y_train, y_test, f"{file}")
    return Dataset("npz", _inputs(x_train, f"{file}"), y_train, _inputs(x_test, f"{file}"), y_test, num_classes)


def csv(*, path: Annotated[str, Length(min=1)], label: Annotated[str, Length(min=1)] = "label", header: bool = True,
        test_path: str | None = None, test_fraction: Fraction = 0.2, seed: Seed = 0,
        delimiter: Annotated[str, Length(min=1, max=1)] = ",") -> Dataset:
    """A table from CSV files of your own: one example per row, a label column, the other columns numbers.

    ``path``: the file; ``label``: the label column, by its name in the header row, or by its
    position (``"0"`` the first column, ``"-1"`` the last; with ``header = false`` only a
    position). ``test_path``: a second file with the same columns as the test split; without
    it, ``test_fraction`` of the rows (permutation seeded by ``seed``) are the test split.
    Every other column is a feature: examples are ``(F,)`` float32. Labels: see the module.
    """
    columns, rows = _read_csv(_existing(path, "csv"), header, delimiter)
    at = _label_column(label, columns, header, path)
    x, y = _table(rows, at, columns, path)
    if test_path is None:
        x_train, y_train, x_test, y_test = _split(x, y, test_fraction, seed, path)
    else:
        test_columns, test_rows = _read_csv(_existing(test_path, "csv", "test_path"), header, delimiter)
        if header and test_columns != columns:
            raise UserError(f"dataset 'csv': {test_path} has the columns {', '.join(test_columns)}; expected the "
                            f"columns of {path}: {', '.join(columns)}")
        x_train, y_train = x, y
        x_test, y_test = _table(test_rows, at, columns, test_path)
    y_train, y_test, num_classes = class_ids(y_train, y_test, path)
    return Dataset("csv", x_train, y_train, x_test, y_test, num_classes)


# -- helpers --------------------------------------------------------------------------------------


def _existing(path: str, dataset: str, option: str = "path") -> Path:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"dataset {dataset!r}: {option} = {path!r}: no such file (looked for {file.resolve()}; a "
                        "relative path is relative to the directory dlbench runs in)")
    return file


def _inputs(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise UserError(f"dataset: {where}: the inputs must be numbers with one example per row (at least 2 "
                        f"dimensions), got dtype {x.dtype} and shape {x.shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"dataset: {where}: the inputs hold NaN or infinite values; remove or impute them first")
    return x


def _split(x, y, test_fraction: float, seed: int, where: str):
    if len(x) != len(y):
        raise UserError(f"dataset: {where}: {len(x)} examples but {len(y)} labels")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    if n_test == 0 or n_test == len(x):
        raise UserError(f"dataset: {where}: test_fraction = {test_fraction} of {len(x)} examples leaves "
                        f"{len(x) - n_test} for training and {n_test} for testing; give more examples or another "
                        "test_fraction")
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def class_ids(y_train: np.ndarray, y_test: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels as class ids 0..K-1 (int64) and K; see the module docstring for the rule."""
    both = np.concatenate([np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)])
    if np.asarray(y_train).ndim != 1 or np.asarray(y_test).ndim != 1:
        raise UserError(f"dataset: {where}: labels must be one class per example (1-D), got shapes "
                        f"{np.shape(y_train)} and {np.shape(y_test)}")
    numbers = _as_numbers(both)
    if numbers is None:  # text labels: sorted distinct values -> 0..K-1
        names, ids = np.unique(both.astype(str), return_inverse=True)
        return ids[:len(y_train)].astype(np.int64), ids[len(y_train):].astype(np.int64), len(names)
    if not np.all(numbers == np.round(numbers)) or (numbers.size and numbers.min() < 0):
        bad = next(v for v in numbers if v != round(v) or v < 0)
        raise UserError(f"dataset: {where}: label {bad:g} is not a class id; labels are non-negative integers "
                        "(class ids 0..K-1) or text (mapped to 0..K-1 in sorted order)")
    ids = numbers.astype(np.int64)
    return ids[:len(y_train)], ids[len(y_train):], int(ids.max()) + 1 if ids.size else 0


def _as_numbers(values: np.ndarray) -> np.ndarray | None:
    """``values`` as float64 when every one is a number (also numbers written as text), else None."""
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    try:
        return np.array([float(v) for v in values.astype(str)], dtype=np.float64)
    except ValueError:
        return None


def _read_csv(path: Path, header: bool, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(column names, or positions without a header; [(line number, cells)]) of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [(i, row) for i, row in enumerate(csvlib.reader(f, delimiter=delimiter), start=1) if row]
    except (OSError, UnicodeDecodeError, csvlib.Error) as exc:
        raise UserError(f"dataset 'csv': {path} cannot be read as CSV ({exc})") from None
    if header and lines:
        columns, lines = [c.strip() for c in lines[0][1]], lines[1:]
    else:
        columns = [str(i) for i in range(len(lines[0][1]))] if lines else []
    if not lines:
        raise UserError(f"dataset 'csv': {path} has no data rows")
    for number, row in lines:
        if len(row) != len(columns):
            raise UserError(f"dataset 'csv': {path}, line {number}: {len(row)} values, expected {len(columns)} "
                            f"(one per column{', as in the header' if header else ', as in the first row'})")
    return columns, lines


def _label_column(label: str, columns: list[str], header: bool, path: str) -> int:
    if header and label in columns:
        return columns.index(label)
    try:
        position = int(label)
    except ValueError:
        if not header:
            raise UserError(f"dataset 'csv': header = false, so label = {label!r} must be the label column's "
                            "position: \"0\" for the first column, \"-1\" for the last") from None
        raise UserError(f"dataset 'csv': {path} has no column {label!r} (its columns: {', '.join(columns)}); set "
                        "label to the name of the label column, or its position (\"-1\": the last)") from None
    if not -len(columns) <= position < len(columns):
        raise UserError(f"dataset 'csv': label = {label!r}: {path} has {len(columns)} columns (positions 0 to "
                        f"{len(columns) - 1}, or -1 to -{len(columns)} from the end)")
    return position % len(columns)


def _table(rows: list[tuple[int, list[str]]], at: int, columns: list[str], path: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F] float32, labels [N] as text) of the rows; a cell that is no number is an error."""
    if len(columns) < 2:
        raise UserError(f"dataset 'csv': {path} has {len(columns)} column; it needs a label column and at least "
                        "one feature column")
    x = np.empty((len(rows), len(columns) - 1), dtype=np.float32)
    features = [i for i in range(len(columns)) if i != at]
    for r, (number, row) in enumerate(rows):
        for c, i in enumerate(features):
            try:
                x[r, c] = float(row[i])
            except ValueError:
                raise UserError(f"dataset 'csv': {path}, line {number}, column {columns[i]!r}: {row[i]!r} is not a "
                                "number; every column but the label must hold numbers") from None
    if not np.isfinite(x).all():
        raise UserError(f"dataset 'csv': {path} holds NaN or infinite values; remove or impute them first")
    return x, np.array([row[at].strip() for _, row in rows])
