"""Datasets read from files: MNIST / Fashion-MNIST (IDX), CIFAR-10 (pickled batches) in
torchvision's layout, and the user's own .npz and CSV files. The tests write small files of the
real formats (the writers here follow the format specifications, not dlbench's readers)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env, describe_result, run_cli, sqlite_uri, write_study
from dlbench.errors import UserError


def dataset(registry, name, **options):
    return registry.get("dataset", name).factory(**options)


def write_idx(path: Path, array: np.ndarray) -> None:
    """LeCun's IDX format: 0, 0, type 0x08 (unsigned byte), ndim, big-endian int32 sizes, data."""
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 5, n_test: int = 3, gz: bool = True):
    """A few 28x28 images and labels in ``<root>/<folder>/raw/`` (torchvision's layout)."""
    rng = np.random.default_rng(0)
    arrays = {"train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
              "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))}
    suffix = ".gz" if gz else ""
    for split, (images, labels) in arrays.items():
        write_idx(root / folder / "raw" / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(root / folder / "raw" / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return arrays


def write_cifar(root: Path, per_batch: int = 2, keys=str):
    """CIFAR-10's "python version": pickled dicts, data [N, 3072] uint8 (the red plane, then
    green, then blue, each 32x32 row-major) and labels a list of ints. The originals are Python 2
    pickles whose keys load as str with encoding="latin1" (torchvision) and as bytes with
    encoding="bytes" (the CIFAR page's recipe): ``keys`` picks which of the two to write."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {"batch_label": name, "labels": labels, "data": data,
                 "filenames": [f"img{i}.png" for i in range(per_batch)]}
        if keys is bytes:
            batch = {k.encode(): v for k, v in batch.items()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = (data, labels)
    return batches


# -- MNIST, Fashion-MNIST, CIFAR-10 ---------------------------------------------------------------


def test_mnist_reads_gzipped_idx_files(tmp_path, registry):
    arrays = write_mnist(tmp_path)
    ds = dataset(registry, "mnist", root=str(tmp_path))
    images, labels = arrays["train"]
    assert ds.x_train.shape == (5, 28, 28) and ds.x_train.dtype == np.float32 and ds.input_shape == (28, 28)
    np.testing.assert_array_equal(ds.x_train, images.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_train, labels)
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.y_test, arrays["t10k"][1])
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() <= 1.0
    limited = dataset(registry, "mnist", root=str(tmp_path), limit=2)
    assert len(limited.x_train) == 2 and len(limited.y_test) == 2
    np.testing.assert_array_equal(limited.x_train, ds.x_train[:2])


def test_fashion_mnist_reads_plain_idx_files_and_hashes_its_content(tmp_path, registry):
    write_mnist(tmp_path, "FashionMNIST", gz=False)
    ds = dataset(registry, "fashion_mnist", root=str(tmp_path))
    assert ds.name == "fashion_mnist" and ds.x_train.shape == (5, 28, 28)
    assert dataset(registry, "fashion_mnist", root=str(tmp_path)).content_hash() == ds.content_hash()
    other = tmp_path / "other"
    write_mnist(other, "FashionMNIST", n_train=6)
    assert dataset(registry, "fashion_mnist", root=str(other)).content_hash() != ds.content_hash()


@pytest.mark.parametrize("keys", [str, bytes])
def test_cifar10_reads_the_pickled_batches_channels_first(tmp_path, registry, keys):
    batches = write_cifar(tmp_path, keys=keys)
    ds = dataset(registry, "cifar10", root=str(tmp_path))
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and ds.input_shape == (3, 32, 32)
    data, labels = batches["data_batch_2"]
    # the third training image is the first of batch 2; its green pixel at row 1, column 5:
    assert ds.x_train[2, 1, 1, 5] == np.float32(data[0, 1024 + 32 + 5] / 255)
    np.testing.assert_array_equal(ds.y_train[2:4], labels)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])


def test_a_cifar_batch_cannot_run_code(tmp_path, registry):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": Path("x"), b"labels": []}, protocol=2))
    with pytest.raises(UserError, match=r"test_batch: not a CIFAR-10 batch .*pathlib"):
        dataset(registry, "cifar10", root=str(tmp_path))


@pytest.mark.parametrize("name, files", [
    ("mnist", ["MNIST/raw", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    ("fashion_mnist", ["FashionMNIST/raw", "train-labels-idx1-ubyte"]),
    ("cifar10", ["cifar-10-batches-py", "data_batch_1", "data_batch_5", "test_batch"]),
])
def test_missing_files_say_which_and_how_to_get_them(tmp_path, registry, name, files):
    with pytest.raises(UserError) as err:
        dataset(registry, name, root=str(tmp_path / "nowhere"))
    message = str(err.value)
    for part in files:
        assert part in message, message
    assert "download = true" in message and "pip install 'dlbench[vision]'" in message and "copying" in message


def test_download_without_torchvision_says_how_to_install_it(tmp_path, registry):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError, match=r"torchvision, which is not installed: `pip install 'dlbench\[vision\]'`"):
        dataset(registry, "mnist", root=str(tmp_path), download=True)


def test_a_corrupt_idx_file_is_named(tmp_path, registry):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">3I", 3, 28, 28) + b"\0" * 100)
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.gz: truncated or corrupt IDX file"):
        dataset(registry, "mnist", root=str(tmp_path))


# -- npz and CSV ------------------------------------------------------------------------------------


def test_npz_with_both_splits(tmp_path, registry):
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(20, 2, 3)), rng.normal(size=(6, 2, 3))
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=np.arange(20) % 4, x_test=x_test, y_test=np.arange(6) % 4)
    ds = dataset(registry, "npz", path=str(tmp_path / "d.npz"))
    assert ds.input_shape == (2, 3) and ds.x_train.dtype == np.float32 and ds.num_classes == 4
    np.testing.assert_array_equal(ds.x_test, x_test.astype(np.float32))
    assert ds.y_train.dtype == np.int64


def test_npz_x_y_split_by_test_fraction_with_text_labels(tmp_path, registry):
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.array(["dog", "cat", "emu", "cat"] * 5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = dataset(registry, "npz", path=str(tmp_path / "d.npz"), test_fraction=0.25, seed=3)
    assert len(ds.x_train) == 15 and len(ds.x_test) == 5 and ds.num_classes == 3
    # every example kept once, its label mapped in sorted order: cat 0, dog 1, emu 2
    xs, ys = np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])
    assert sorted(xs[:, 0].tolist()) == x[:, 0].tolist()
    names = ["cat", "dog", "emu"]
    assert all(names[label] == y[int(row[0]) // 2] for row, label in zip(xs, ys))


def test_npz_errors(tmp_path, registry):
    with pytest.raises(UserError, match=r"path = '.*missing.npz': no such file"):
        dataset(registry, "npz", path=str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "a.npz", x_train=np.zeros((3, 2)), y_train=np.zeros(3))
    with pytest.raises(UserError, match=r"holds the arrays x_train, y_train; it needs x_train, y_train, x_test and "
                                        r"y_test, or x and y"):
        dataset(registry, "npz", path=str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", x=np.zeros((10, 2)), y=np.array([0, 1, -1, 0, 1, 0, 1, 0, 1, 0]))
    with pytest.raises(UserError, match=r"label -1 is not a class id"):
        dataset(registry, "npz", path=str(tmp_path / "b.npz"))
    np.savez(tmp_path / "c.npz", x=np.array([["a", "b"]] * 10), y=np.zeros(10))
    with pytest.raises(UserError, match=r"inputs must be numbers"):
        dataset(registry, "npz", path=str(tmp_path / "c.npz"))
    (tmp_path / "d.npz").write_text("not a zip")
    with pytest.raises(UserError, match=r"cannot be read as an .npz file"):
        dataset(registry, "npz", path=str(tmp_path / "d.npz"))


def test_csv_with_header_label_by_name_and_a_test_file(tmp_path, registry):
    (tmp_path / "train.csv").write_text("a,species,b\n1.5,setosa,2\n3,virginica,4e-1\n-1,setosa,0\n")
    (tmp_path / "test.csv").write_text("a,species,b\n0,virginica,1\n")
    ds = dataset(registry, "csv", path=str(tmp_path / "train.csv"), label="species",
                 test_path=str(tmp_path / "test.csv"))
    np.testing.assert_array_equal(ds.x_train, np.array([[1.5, 2], [3, 0.4], [-1, 0]], dtype=np.float32))
    np.testing.assert_array_equal(ds.y_train, [0, 1, 0])
    np.testing.assert_array_equal(ds.y_test, [1])
    assert ds.num_classes == 2 and ds.input_shape == (2,)


def test_csv_without_header_label_by_position_and_test_fraction(tmp_path, registry):
    rows = [f"{i},{i * 2},{i % 3}" for i in range(10)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    ds = dataset(registry, "csv", path=str(tmp_path / "d.csv"), header=False, label="-1", test_fraction=0.3)
    assert len(ds.y_train) == 7 and len(ds.y_test) == 3 and ds.num_classes == 3
    for x, y in zip(np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])):
        assert x[1] == 2 * x[0] and y == int(x[0]) % 3


def test_csv_errors_name_the_line_and_column(tmp_path, registry):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(UserError, match=r"d.csv, line 3, column 'b': 'oops' is not a number"):
        dataset(registry, "csv", path=str(tmp_path / "d.csv"))
    with pytest.raises(UserError, match=r"has no column 'class' \(its columns: a, b, label\)"):
        dataset(registry, "csv", path=str(tmp_path / "d.csv"), label="class")
    (tmp_path / "e.csv").write_text("a,b,label\n1,2,0\n3,4\n")
    with pytest.raises(UserError, match=r"e.csv, line 3: 2 values, expected 3"):
        dataset(registry, "csv", path=str(tmp_path / "e.csv"))
    (tmp_path / "f.csv").write_text("a,label\n1,0.5\n2,1\n3,0\n4,1\n5,1\n")
    with pytest.raises(UserError, match=r"label 0.5 is not a class id"):
        dataset(registry, "csv", path=str(tmp_path / "f.csv"))
    with pytest.raises(UserError, match=r"header = false, so label = 'label' must be the label column's position"):
        dataset(registry, "csv", path=str(tmp_path / "f.csv"), header=False)


# -- end to end -------------------------------------------------------------------------------------


@pytest.mark.slow  # a whole study, end to end
def test_a_study_on_a_csv_file_with_standardize_end_to_end(tmp_path):
    """The real CLI: a CSV dataset, preprocessing = ["standardize"]; MLflow records what was fitted.
    A missing file is a study-file error before anything trains (exit 2, no traceback)."""
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    x = rng.normal(size=(150, 4)) * [1, 10, 100, 0] + y[:, None] * [1, 5, 50, 0]  # one constant feature
    (tmp_path / "d.csv").write_text("f1,f2,f3,f4,label\n" + "".join(
        ",".join(f"{v:.4f}" for v in row) + f",{label}\n" for row, label in zip(x, y)))
    study = write_study(tmp_path, """\
        [study]
        name = "own"
        seeds = 1
        [baseline]
        dataset = { name = "csv", path = "d.csv" }
        preprocessing = ["standardize"]
        architecture = { name = "mlp", width = 8, depth = 1 }
        epochs = 1
        [studies.s.levels]
        a = {}
        """)
    db = tmp_path / "mlflow.db"
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--device", "cpu", "--jobs", "1"], cwd=tmp_path,
                   env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    client = MlflowClient(sqlite_uri(db))
    (run,) = client.search_runs([client.get_experiment_by_name("own").experiment_id], "tags.`dlbench.role` = 'trial'")
    tags, params = run.data.tags, run.data.params
    assert tags["dlbench.preprocessing"] == "standardize: 4 features to mean 0, std 1 (1 constant: centered only)"
    assert tags["dlbench.plugin.preprocessing.standardize"].startswith("standardize [built-in")
    assert params["preprocessing"] == '[{"name": "standardize"}]' and params["dataset.path"] == "d.csv"
    assert tags["dlbench.status"] == "finished"

    study.write_text(study.read_text().replace('path = "d.csv"', 'path = "gone.csv"'))
    proc = run_cli(["run", study, "--tracking-uri", sqlite_uri(db), "--device", "cpu"], cwd=tmp_path,
                   env=cli_env(autoload=False))
    assert proc.returncode == 2, describe_result(proc)
    assert "baseline.dataset (dataset 'csv' [built-in]) raised UserError: dataset 'csv': path = 'gone.csv': no such " \
           "file" in proc.stderr, describe_result(proc)
    assert "Traceback" not in proc.stderr
