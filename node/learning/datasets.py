"""Datasets a node can load offline, with the same test set on every node and every run.

No code path downloads. `digits` ships with scikit-learn; Fashion-MNIST is read from the Debian package
`dataset-fashion-mnist`; MNIST-1D is generated locally by the `mnist1d` package. `npz:FILE` is a dataset
someone computed (e.g. a study's text embeddings, studies/encoders.py): a .npz of x_train, y_train,
x_test, y_test and num_classes, read without pickle. Only numpy is imported here at module load:
scikit-learn and mnist1d are imported by the loader that needs them.
"""

from __future__ import annotations

import gzip
import io
import os
import random
from dataclasses import dataclass, replace
from math import prod
from pathlib import Path

import numpy as np

DATASETS = ("digits", "fashion-mnist", "mnist1d")  # and mnist1d:N, MNIST-1D of N samples
FILE_PREFIX = "npz:"  # a dataset in a file: npz:PATH

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DIR_ENV = "MANYMODELS_FASHION_MNIST_DIR"
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

# Fixed, never the caller's seed: the train/test split and any test subsample must be identical on
# every node and in every run, or accuracies could not be compared.
SPLIT_SEED = 0


class DatasetError(ValueError):
    """A dataset cannot be loaded; the message is one line a user can act on."""


# eq=False: the generated __eq__/__hash__ would compare numpy arrays, which is ambiguous.
@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test arrays: x float32 of shape (n, *input_shape), y int64 class ids in [0, num_classes)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]


def load_dataset(
    name: str, seed: int = 0, *, max_train: int | None = None, max_test: int | None = None
) -> Dataset:
    """Load dataset `name` (one of DATASETS, or npz:PATH), optionally subsampled for speed.

    `seed` only chooses the `max_train` training subsample; the test set (and its `max_test`
    subsample) never depends on it.
    """
    loaders = {"digits": _load_digits, "fashion-mnist": _load_fashion_mnist, "mnist1d": _load_mnist1d}
    base, _, size = name.partition(":")
    if base == "mnist1d" and size:  # mnist1d:N, N samples generated (e.g. for 10,000 nodes)
        if not size.isdigit() or int(size) < 10:
            raise DatasetError(f"bad dataset {name!r}: expected mnist1d:N with N, the samples to generate, at least 10")
        loaders[name] = lambda: _load_mnist1d(int(size))
    if name.startswith(FILE_PREFIX):
        ds = load_npz(Path(name[len(FILE_PREFIX):]))
    elif name not in loaders:
        raise DatasetError(f"unknown dataset {name!r}: available datasets are {', '.join(DATASETS)}")
    else:
        ds = loaders[name]()
    train = _subsample(len(ds.y_train), max_train, seed, "max_train")
    test = _subsample(len(ds.y_test), max_test, SPLIT_SEED, "max_test")
    return replace(
        ds,
        x_train=ds.x_train[train],
        y_train=ds.y_train[train],
        x_test=ds.x_test[test],
        y_test=ds.y_test[test],
    )


def with_label_noise(data: Dataset, fraction: float, seed: int) -> Dataset:
    """`data` with round(fraction * n) of its training labels, chosen by `seed`, each set to another class
    drawn uniformly; the test set stays clean (what the model is measured against)."""
    if not fraction:
        return data
    rng = np.random.default_rng([seed, 0x1ABE1])
    y = data.y_train.copy()
    flip = rng.choice(len(y), size=round(fraction * len(y)), replace=False)
    y[flip] = (y[flip] + rng.integers(1, data.num_classes, size=len(flip))) % data.num_classes
    return replace(data, y_train=y)


def _subsample(n: int, limit: int | None, seed: int, what: str) -> slice | np.ndarray:
    """Sorted indices of a seeded random subset of at most `limit` of `n` samples."""
    if limit is None or limit >= n:
        return slice(None)
    if limit < 1:
        raise DatasetError(f"{what} must be at least 1, got {limit}")
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # pixels are 0..16
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=SPLIT_SEED
    )
    return Dataset("digits", x_train, y_train, x_test, y_test, 10, (1, 8, 8))


def _load_fashion_mnist() -> Dataset:
    """The official 60,000/10,000 split from the IDX files, pixels scaled to [0, 1]."""
    root = Path(os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DIR)
    paths = {key: root / file for key, file in FASHION_MNIST_FILES.items()}
    for path in paths.values():
        if not path.is_file():
            raise DatasetError(
                "fashion-mnist needs the Debian package dataset-fashion-mnist "
                f"(apt-get install dataset-fashion-mnist): {path} not found"
            )
    arrays = {}
    for split in ("train", "test"):
        images = _read_idx(paths[f"x_{split}"], ndim=3)
        labels = _read_idx(paths[f"y_{split}"], ndim=1)
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise DatasetError(
                f"fashion-mnist {split} files disagree: images {images.shape}, labels {labels.shape}, "
                "expected (n, 28, 28) and (n,)"
            )
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{paths[f'y_{split}']}: label {labels.max()} outside 0..9")
        arrays[f"x_{split}"] = np.divide(images, 255, dtype=np.float32)[:, None]
        arrays[f"y_{split}"] = labels.astype(np.int64)
    return Dataset("fashion-mnist", num_classes=10, input_shape=(1, 28, 28), **arrays)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes (http://yann.lecun.com/exdb/mnist/ layout)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable gzip file ({e})") from None
    header = 4 + 4 * ndim
    # Magic: two zero bytes, 0x08 (unsigned byte data), then the number of dimensions.
    expected_magic = (0x08 << 8) | ndim
    magic = int.from_bytes(raw[:4], "big")
    if len(raw) < header or magic != expected_magic:
        raise DatasetError(
            f"{path}: not an IDX file of {ndim}-dimensional unsigned bytes "
            f"(magic {magic:#010x}, expected {expected_magic:#010x})"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != prod(shape):
        raise DatasetError(f"{path}: header says shape {shape} but {len(raw) - header} data bytes follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_mnist1d(samples: int | None = None) -> Dataset:
    """MNIST-1D generated with the package's default arguments (4,000/1,000 split, seed 42), or
    with `samples` in all (80 % of them for training), about a millisecond each."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DatasetError("mnist1d needs the Python package mnist1d (pip install mnist1d)") from None
    # make_dataset reseeds the global `random` and `np.random` generators; give the caller theirs back.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        # make_dataset, never get_dataset: get_dataset tries to download a pickle.
        args = get_dataset_args()
        if samples is not None:
            args.num_samples = samples
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    # make_dataset already standardizes x (mean 0, standard deviation 1 over all samples).
    return Dataset(
        "mnist1d",
        data["x"].astype(np.float32),
        data["y"].astype(np.int64),
        data["x_test"].astype(np.float32),
        data["y_test"].astype(np.int64),
        10,
        (40,),
    )


def npz_bytes(ds: Dataset) -> bytes:
    """`ds` as the bytes of a file that load_npz reads back (`np.savez`: no pickle)."""
    out = io.BytesIO()
    np.savez(out, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
             num_classes=np.int64(ds.num_classes))
    return out.getvalue()


def load_npz(path: Path) -> Dataset:
    """A dataset from a .npz file (npz_bytes'): inputs as float32, labels as int64 in [0, num_classes)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in ("x_train", "y_train", "x_test", "y_test", "num_classes")}
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"{path}: not a dataset file of x_train, y_train, x_test, y_test, num_classes ({e})") from None
    num_classes = int(arrays.pop("num_classes"))
    x_train, x_test = (arrays[k].astype(np.float32) for k in ("x_train", "x_test"))
    y_train, y_test = (arrays[k].astype(np.int64) for k in ("y_train", "y_test"))
    if x_train.shape[1:] != x_test.shape[1:] or len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetError(f"{path}: shapes disagree: x_train {x_train.shape}, y_train {y_train.shape}, "
                           f"x_test {x_test.shape}, y_test {y_test.shape}")
    labels = np.concatenate([y_train, y_test])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: labels outside 0..{num_classes - 1}")
    return Dataset(path.stem, x_train, y_train, x_test, y_test, num_classes, tuple(x_train.shape[1:]))
