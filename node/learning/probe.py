"""Probe sets: public, unlabelled inputs on which nodes publish predictions for distillation.
A probe set is named by the digest of its canonical bytes, so two nodes combine signals only
when they computed them on exactly the same inputs."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from manymodels.protocol import array_digest

from .datasets import SPLIT_SEED, Dataset

DEFAULT_SIZE = 200


class ProbeError(ValueError):
    pass


@dataclass(frozen=True, eq=False)
class ProbeSet:
    name: str
    x: np.ndarray  # float32, (n, *input_shape)

    @property
    def digest(self) -> bytes:
        return array_digest(self.x)


def split_probe(data: Dataset, size: int = DEFAULT_SIZE) -> tuple[ProbeSet, Dataset]:
    """The built-in probe set: `size` training inputs (labels dropped) set aside from every node's
    private data. Chosen with a fixed seed, so every node derives the same probe and digest."""
    probe, rest = probe_indices(len(data.y_train), size)
    probe_set = ProbeSet(f"{data.name}:{size}", np.ascontiguousarray(data.x_train[probe], dtype=np.float32))
    return probe_set, replace(data, x_train=data.x_train[rest], y_train=data.y_train[rest])


def probe_indices(n: int, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Which of `n` training examples split_probe sets aside (sorted), and which it keeps (sorted): a
    study that knows the labels can fit a probe-only predictor on them."""
    if not 0 < size < n:
        raise ProbeError(f"probe size must be in 1..{n - 1}, got {size}")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[:size]), np.sort(order[size:])


def load_probe(path: str | Path, input_shape: tuple[int, ...]) -> ProbeSet:
    """A user's own probe set: a .npy file of inputs shaped like the dataset's (no pickle allowed)."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot read probe set {path}: {exc}") from None
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(input_shape) or x.dtype.kind not in "fiu":
        raise ProbeError(f"probe set {path} is {x.dtype}{list(x.shape)}; expected numbers shaped (n, {', '.join(map(str, input_shape))})")
    return ProbeSet(Path(path).name, np.ascontiguousarray(x, dtype=np.float32))
