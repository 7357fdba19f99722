"""Split one labelled dataset among many nodes: iid, label-skewed (Dirichlet) or pathological (shards).

Every scheme returns sorted, disjoint index arrays that together cover every sample (none is dropped),
and is deterministic for a seed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

SPEC_FORMS = "iid, dirichlet:ALPHA (ALPHA > 0), shards:K (K >= 1)"
DIRICHLET_TRIES = 100


class PartitionError(ValueError):
    """A partition spec or request that cannot be honoured; the message is one clear line."""


class PartitionSpec(NamedTuple):
    scheme: str  # "iid", "dirichlet" or "shards"
    param: float | int | None  # alpha for dirichlet, shards per partition for shards, None for iid


def parse_partition(spec: str) -> PartitionSpec:
    """Parse 'iid', 'dirichlet:ALPHA' or 'shards:K'."""
    scheme, sep, arg = spec.partition(":")
    if scheme == "iid" and not sep:
        return PartitionSpec("iid", None)
    if scheme == "dirichlet" and sep:
        try:
            alpha = float(arg)
        except ValueError:
            alpha = math.nan
        if math.isfinite(alpha) and alpha > 0:
            return PartitionSpec("dirichlet", alpha)
        raise PartitionError(f"bad partition spec {spec!r}: expected dirichlet:ALPHA with ALPHA > 0")
    if scheme == "shards" and sep:
        if arg.isdecimal() and int(arg) >= 1:
            return PartitionSpec("shards", int(arg))
        raise PartitionError(f"bad partition spec {spec!r}: expected shards:K with integer K >= 1")
    raise PartitionError(f"unknown partition spec {spec!r}: expected one of {SPEC_FORMS}")


def partition(
    labels: np.ndarray, num_partitions: int, spec: str, seed: int, *, min_size: int | None = None
) -> list[np.ndarray]:
    """Indices into `labels` for each of `num_partitions` partitions, following `spec`.

    - `iid`: a stratified random split; partition sizes and per-class counts differ by at most one.
    - `dirichlet:ALPHA`: for each class, proportions over partitions drawn from Dirichlet(ALPHA)
      (Hsu et al. 2019; Flower Datasets' DirichletPartitioner). Small ALPHA gives few classes per
      partition, large ALPHA approaches iid. Redrawn (up to DIRICHLET_TRIES times) until every partition
      has at least `min_size` samples, by default min(10, n // (10 * num_partitions)) but at least 1.
    - `shards:K`: sort by label, cut into num_partitions * K equal shards, deal K random shards to each
      partition (McMahan et al. 2017), so a partition sees about K classes (at most 2K while every shard
      is no larger than the smallest class).
    """
    parsed = parse_partition(spec)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise PartitionError(
            f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}"
        )
    n = len(labels)
    if num_partitions < 1 or num_partitions > n:
        raise PartitionError(f"cannot split {n} samples into {num_partitions} partitions: need 1 to {n}")
    rng = np.random.default_rng(seed)
    # Shuffle before the stable sort by label so the order within each class is random.
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]

    if parsed.scheme == "iid":
        # Dealing the label-sorted order round-robin spreads every class evenly.
        parts = [by_label[p::num_partitions] for p in range(num_partitions)]
    elif parsed.scheme == "dirichlet":
        parts = _dirichlet(labels, by_label, num_partitions, parsed.param, rng, min_size, spec)
    else:
        num_shards = num_partitions * parsed.param
        if num_shards > n:
            raise PartitionError(
                f"{spec} needs at least {num_shards} samples for {num_partitions} partitions, got {n}"
            )
        shards = np.array_split(by_label, num_shards)
        owners = rng.permutation(num_shards).reshape(num_partitions, parsed.param)
        parts = [np.concatenate([shards[s] for s in row]) for row in owners]
    return [np.sort(p) for p in parts]


def _dirichlet(labels, by_label, num_partitions, alpha, rng, min_size, spec) -> list[np.ndarray]:
    n = len(labels)
    if min_size is None:
        min_size = max(1, min(10, n // (10 * num_partitions)))  # small enough for 200 nodes on digits
    _, starts = np.unique(labels[by_label], return_index=True)
    per_class = np.split(by_label, starts[1:])
    for _ in range(DIRICHLET_TRIES):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for idx in per_class:
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                chunks[p].append(chunk)
        parts = [np.concatenate(c) for c in chunks]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise PartitionError(
        f"{spec} could not give each of {num_partitions} partitions at least {min_size} of {n} samples "
        f"in {DIRICHLET_TRIES} draws: use a larger alpha or fewer partitions"
    )


def label_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Samples of each class in each partition: an int64 array of shape (len(parts), num_classes)."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)
