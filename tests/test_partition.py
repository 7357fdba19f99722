import re

import numpy as np
import pytest

from manymodels.node.learning.partition import (
    PartitionError,
    PartitionSpec,
    label_counts,
    parse_partition,
    partition,
)

SPECS = ["iid", "dirichlet:0.5", "dirichlet:0.05", "shards:2"]


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """2,000 shuffled labels over 10 classes of unequal sizes (150 to 250)."""
    rng = np.random.default_rng(0)
    sizes = np.linspace(150, 250, 10).astype(int)
    sizes[-1] += 2000 - sizes.sum()
    return rng.permutation(np.repeat(np.arange(10), sizes))


def classes_present(labels, parts, share=0.05) -> float:
    """Mean number of classes holding at least `share` of a partition."""
    counts = label_counts(labels, parts, 10)
    return float(np.mean((counts / counts.sum(axis=1, keepdims=True) >= share).sum(axis=1)))


@pytest.mark.parametrize("spec", SPECS)
def test_disjoint_sorted_and_covering(labels, spec):
    parts = partition(labels, 10, spec, seed=0)
    assert len(parts) == 10
    for p in parts:
        assert np.issubdtype(p.dtype, np.integer) and np.all(np.diff(p) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


@pytest.mark.parametrize("spec", SPECS)
def test_deterministic_for_a_seed(labels, spec):
    a, b, c = (partition(labels, 10, spec, seed=s) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_balances_sizes_and_classes(labels):
    parts = partition(labels, 7, "iid", seed=0)
    counts = label_counts(labels, parts, 10)
    assert np.ptp(counts, axis=0).max() <= 1
    assert np.ptp([len(p) for p in parts]) <= 1


def test_dirichlet_skew_follows_alpha(labels):
    iid = classes_present(labels, partition(labels, 10, "iid", seed=0))
    skewed = classes_present(labels, partition(labels, 10, "dirichlet:0.1", seed=0))
    near_iid = classes_present(labels, partition(labels, 10, "dirichlet:1000", seed=0))
    assert iid == 10
    assert skewed < 5
    assert near_iid >= 9.5


def test_dirichlet_minimum_size(labels):
    for seed in range(5):
        parts = partition(labels, 20, "dirichlet:0.05", seed=seed)
        assert min(len(p) for p in parts) >= 10  # min(10, 2000 // (10 * 20))
    parts = partition(labels, 10, "dirichlet:0.3", seed=0, min_size=120)
    assert min(len(p) for p in parts) >= 120


def test_dirichlet_impossible_minimum_is_a_clear_error():
    few = np.repeat(np.arange(3), 10)  # tiny alpha puts each class on ~one of 10 partitions
    with pytest.raises(PartitionError, match="could not give each of 10 partitions at least 1 of 30 samples"):
        partition(few, 10, "dirichlet:0.001", seed=0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_limit_classes_per_partition(labels, k):
    parts = partition(labels, 10, f"shards:{k}", seed=0)
    counts = label_counts(labels, parts, 10)
    per_part = (counts > 0).sum(axis=1)
    # A shard is smaller than every class, so it straddles at most one class boundary.
    assert per_part.max() <= 2 * k
    assert per_part.mean() <= k + 1
    assert np.ptp([len(p) for p in parts]) <= k


def test_shards_need_enough_samples():
    with pytest.raises(PartitionError, match="shards:3 needs at least 30 samples for 10 partitions, got 20"):
        partition(np.arange(20) % 2, 10, "shards:3", seed=0)


def test_more_partitions_than_samples():
    with pytest.raises(PartitionError, match="cannot split 5 samples into 6 partitions"):
        partition(np.zeros(5, dtype=int), 6, "iid", seed=0)


def test_labels_must_be_integers():
    with pytest.raises(PartitionError, match="1-D integer array"):
        partition(np.zeros(10), 2, "iid", seed=0)


def test_parse_valid_specs():
    assert parse_partition("iid") == PartitionSpec("iid", None)
    assert parse_partition("dirichlet:0.5") == PartitionSpec("dirichlet", 0.5)
    assert parse_partition("shards:2") == PartitionSpec("shards", 2)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("dirichlet:x", "bad partition spec 'dirichlet:x': expected dirichlet:ALPHA with ALPHA > 0"),
        ("dirichlet:0", "expected dirichlet:ALPHA with ALPHA > 0"),
        ("dirichlet:-1", "expected dirichlet:ALPHA with ALPHA > 0"),
        ("dirichlet:nan", "expected dirichlet:ALPHA with ALPHA > 0"),
        ("dirichlet:inf", "expected dirichlet:ALPHA with ALPHA > 0"),
        ("shards:0", "bad partition spec 'shards:0': expected shards:K with integer K >= 1"),
        ("shards:1.5", "expected shards:K with integer K >= 1"),
        ("shards:", "expected shards:K with integer K >= 1"),
        ("dirichlet", "unknown partition spec 'dirichlet'"),
        ("iid:2", "unknown partition spec 'iid:2'"),
        ("", "unknown partition spec ''"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(PartitionError, match=re.escape(message)):
        parse_partition(spec)


def test_unknown_scheme_lists_valid_forms():
    with pytest.raises(PartitionError) as err:
        partition(np.arange(10) % 2, 2, "random", seed=0)
    assert str(err.value) == (
        "unknown partition spec 'random': expected one of iid, dirichlet:ALPHA (ALPHA > 0), shards:K (K >= 1)"
    )


def test_label_counts(labels):
    parts = partition(labels, 4, "iid", seed=0)
    counts = label_counts(labels, parts, 10)
    assert counts.shape == (4, 10) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts.sum(axis=0), np.bincount(labels))
