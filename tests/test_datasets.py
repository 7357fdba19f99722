import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

from manymodels.node.learning.datasets import (
    DATASETS,
    FASHION_MNIST_DIR,
    FASHION_MNIST_DIR_ENV,
    FASHION_MNIST_FILES,
    Dataset,
    DatasetError,
    load_dataset,
)


def _check(ds: Dataset, n_train: int, n_test: int, input_shape: tuple[int, ...]) -> None:
    assert ds.input_shape == input_shape and ds.num_classes == 10
    assert ds.x_train.shape == (n_train, *input_shape) and ds.x_test.shape == (n_test, *input_shape)
    assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    for y in (ds.y_train, ds.y_test):
        assert y.min() >= 0 and y.max() < ds.num_classes


def test_digits_shapes_dtypes_and_range():
    ds = load_dataset("digits")
    assert ds.name == "digits"
    _check(ds, 1347, 450, (1, 8, 8))
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))


def test_digits_test_set_does_not_depend_on_seed():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=7)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_digits_split_is_stratified():
    ds = load_dataset("digits")
    test = np.bincount(ds.y_test, minlength=10)
    total = test + np.bincount(ds.y_train, minlength=10)
    assert np.all(np.abs(test - 0.25 * total) <= 1)


def test_subsampling_is_seeded_for_train_and_fixed_for_test():
    a = load_dataset("digits", seed=1, max_train=100, max_test=50)
    again = load_dataset("digits", seed=1, max_train=100, max_test=50)
    other = load_dataset("digits", seed=2, max_train=100, max_test=50)
    assert len(a.y_train) == 100 and len(a.y_test) == 50
    np.testing.assert_array_equal(a.x_train, again.x_train)
    assert not np.array_equal(a.x_train, other.x_train)
    np.testing.assert_array_equal(a.x_test, other.x_test)
    assert len(load_dataset("digits", max_train=10**6).y_train) == 1347


def test_bad_subsample_size():
    with pytest.raises(DatasetError, match="max_train must be at least 1, got 0"):
        load_dataset("digits", max_train=0)


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar")
    assert str(err.value) == "unknown dataset 'cifar': available datasets are digits, fashion-mnist, mnist1d"
    assert DATASETS == ("digits", "fashion-mnist", "mnist1d")


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(root: Path, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)),
        "y_train": np.arange(n_train) % 10,
        "x_test": rng.integers(0, 256, (n_test, 28, 28)),
        "y_test": np.arange(n_test) % 10,
    }
    arrays["x_train"][0, 0, :2] = (0, 255)  # pin both ends of the pixel range
    for key, file in FASHION_MNIST_FILES.items():
        (root / file).write_bytes(gzip.compress(_idx_bytes(arrays[key])))
    return arrays


def test_fashion_mnist_from_idx_files(tmp_path, monkeypatch):
    arrays = _write_fashion(tmp_path)
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    ds = load_dataset("fashion-mnist")
    _check(ds, 12, 5, (1, 28, 28))
    assert ds.x_train[0, 0, 0, 0] == 0.0 and ds.x_train[0, 0, 0, 1] == 1.0
    np.testing.assert_allclose(ds.x_train[:, 0] * 255, arrays["x_train"], atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])


def test_fashion_mnist_debian_file_names():
    assert sorted(FASHION_MNIST_FILES.values()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    assert FASHION_MNIST_DIR == Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize(
    "file, payload, message",
    [
        ("train-images-idx3-ubyte.gz", _idx_bytes(np.zeros((3, 28, 28)), magic=0x0801), "not an IDX file"),
        ("train-images-idx3-ubyte.gz", _idx_bytes(np.zeros((3, 28, 28)))[:-1], "data bytes follow"),
        ("train-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(4)), "files disagree"),
        ("train-labels-idx1-ubyte.gz", _idx_bytes(np.full(12, 10)), "label 10 outside 0..9"),
    ],
)
def test_fashion_mnist_rejects_malformed_files(tmp_path, monkeypatch, file, payload, message):
    _write_fashion(tmp_path)
    (tmp_path / file).write_bytes(gzip.compress(payload))
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(DatasetError, match=message):
        load_dataset("fashion-mnist")


def test_fashion_mnist_rejects_non_gzip(tmp_path, monkeypatch):
    _write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(DatasetError, match="not a readable gzip file"):
        load_dataset("fashion-mnist")


def test_missing_fashion_mnist_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist")
    assert str(err.value) == (
        "fashion-mnist needs the Debian package dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist): {tmp_path / 'nowhere' / 'train-images-idx3-ubyte.gz'} "
        "not found"
    )


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"{FASHION_MNIST_DIR} missing: apt-get install dataset-fashion-mnist",
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_DIR_ENV, raising=False)
    ds = load_dataset("fashion-mnist")
    _check(ds, 60000, 10000, (1, 28, 28))
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert np.all(np.bincount(ds.y_train) == 6000) and np.all(np.bincount(ds.y_test) == 1000)


@pytest.mark.slow
def test_mnist1d_loads_offline():
    pytest.importorskip("mnist1d", reason="pip install mnist1d")
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    ds = load_dataset("mnist1d")
    assert np.random.random() == expected_next  # the caller's global RNG is left alone
    assert ds.name == "mnist1d"
    _check(ds, 4000, 1000, (40,))
    assert abs(ds.x_train.mean()) < 0.05 and abs(ds.x_train.std() - 1) < 0.05
    np.testing.assert_array_equal(ds.x_test, load_dataset("mnist1d", seed=5).x_test)


def test_missing_mnist1d_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist1d")
    assert str(err.value) == "mnist1d needs the Python package mnist1d (pip install mnist1d)"


def test_a_dataset_in_a_file_reads_back_as_written(tmp_path):
    from manymodels.node.learning.datasets import npz_bytes

    rng = np.random.default_rng(0)
    ds = Dataset("features", rng.normal(size=(12, 5)).astype(np.float32), rng.integers(0, 3, 12),
                 rng.normal(size=(4, 5)).astype(np.float32), np.array([0, 1, 2, 2]), 3, (5,))
    (tmp_path / "features.npz").write_bytes(npz_bytes(ds))
    back = load_dataset(f"npz:{tmp_path / 'features.npz'}", max_train=6)
    assert back.name == "features" and back.num_classes == 3 and back.input_shape == (5,)
    assert back.x_train.shape == (6, 5) and back.x_train.dtype == np.float32 and back.y_train.dtype == np.int64
    np.testing.assert_array_equal(back.x_test, ds.x_test)
    (tmp_path / "bad.npz").write_bytes(npz_bytes(Dataset("bad", ds.x_train, ds.y_train, ds.x_test, ds.y_test + 1, 3, (5,))))
    with pytest.raises(DatasetError, match="labels outside 0..2"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(DatasetError, match="not a dataset file"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_mnist1d_of_n_samples():
    pytest.importorskip("mnist1d", reason="pip install mnist1d")
    _check(load_dataset("mnist1d:250"), 200, 50, (40,))  # the package keeps 80 % for training
    for bad in ("mnist1d:x", "mnist1d:5", "digits:100"):
        with pytest.raises(DatasetError):
            load_dataset(bad)
