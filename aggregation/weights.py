"""Weight rules: a list of (update, weight) pairs -> one update, Flower-style pure functions.

Signature: `rule(results, reference=None, **params) -> NDArrays`. `reference` is the aggregating node's own
current weights (by convention also `results[0]`); rules that do not need it ignore it.
`Rule.__call__` validates inputs before a rule runs (non-empty, same shapes and dtypes everywhere, finite
weights >= 0, enough inputs, reference present where needed), so the functions here assume that.
Every rule returns new arrays and never writes to its inputs (received arrays may be read-only buffers).
Float tensors keep their dtype; integer tensors come back as float64, as with Flower's kernels.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .base import NDArrays, Results, RuleError

# Columns per float64 block in `_blocks`: (n, 65536) float64 is a few MB, small enough to stay in cache
# and large enough that the per-block Python overhead vanishes (measured fastest of 4K..256K).
_BLOCK = 1 << 16


def _out_dtype(array: np.ndarray) -> np.dtype:
    return array.dtype if np.issubdtype(array.dtype, np.inexact) else np.dtype(np.float64)


def _blocks(updates: list[NDArrays]) -> Iterator[tuple[int, slice, np.ndarray]]:
    """Yield (tensor index, slice of the flattened tensor, (n, block) float64 stack of that slice).

    Reductions over the updates then run on one cache-sized block at a time: float64 accuracy without
    a float64 copy of everything (10 updates of 10 M parameters would need 800 MB).
    """
    for index, tensors in enumerate(zip(*updates)):
        flat = [a.reshape(-1) for a in tensors]
        for start in range(0, flat[0].size, _BLOCK):
            part = slice(start, start + _BLOCK)
            yield index, part, np.array([f[part] for f in flat], dtype=np.float64)


def _combine(updates: list[NDArrays], coefs: list[float]) -> NDArrays:
    """sum_i coefs[i] * updates[i], accumulated in float64.

    Flower's `aggregate` builds a scaled float32 copy of every update and then a chain of sums; a
    blockwise weighted sum reads each input once and writes the output once, 2-3x faster
    on 10 x 10 M parameters (bench/bench_aggregation.py), and float64 accumulation is the more accurate.
    einsum, not `weights @ block`: OpenBLAS's threaded matrix-vector product on many small blocks ran
    10-20x slower whenever other processes kept the cores busy; einsum's own loop needs no threads.
    """
    weights = np.asarray(coefs, dtype=np.float64)
    out = [np.empty(a.size, _out_dtype(a)) for a in updates[0]]
    for index, part, block in _blocks(updates):
        out[index][part] = np.einsum("i,ij->j", weights, block)
    return [o.reshape(a.shape) for o, a in zip(out, updates[0])]


def fedavg_coefficients(weights: list[float]) -> list[float]:
    """Each update's coefficient in fedavg's sum: its share of the weights."""
    total = sum(weights)
    if total <= 0:
        raise RuleError("the weights of the updates to average sum to 0")
    return [weight / total for weight in weights]


def _weighted_mean(results: Results) -> NDArrays:
    return _combine([update for update, _ in results], fedavg_coefficients([weight for _, weight in results]))


def _sq_distances(updates: list[NDArrays]) -> np.ndarray:
    """(n, n) squared L2 distances between the flattened updates, from the Gram matrix.

    ||a-b||^2 = ||a||^2 + ||b||^2 - 2 a.b needs one blockwise BLAS pass over the data, where Flower's
    `_compute_distances` loops n^2 times in Python, each time allocating a full-length difference.
    In float64 the cancellation error is ~1e-16 ||a||^2; clipping at 0 removes its negative noise.
    """
    gram = np.zeros((len(updates), len(updates)))
    for _, _, block in _blocks(updates):
        gram += block @ block.T
    norms = np.diag(gram)
    dist = np.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def _sorted_mean(results: Results, lo: int, hi: int) -> NDArrays:
    """Per coordinate, the mean of the order statistics lo..hi-1 (median and trimmed mean).

    Sorting the stacked tensor in place along axis 0 is 3-5x faster than np.median / np.partition
    along axis 0 (Flower's kernels) for a handful of updates (bench/bench_aggregation.py), and gives
    the same values.
    """
    return [sorted_rows_mean(np.stack(tensors), lo, hi) for tensors in zip(*(update for update, _ in results))]


def sorted_rows_mean(stacked: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per column, the mean of the order statistics lo..hi-1 of the rows (sorts `stacked` in place)."""
    stacked.sort(axis=0)
    return stacked[lo:hi].mean(axis=0)


def rows_median(stacked: np.ndarray) -> np.ndarray:
    """np.median(stacked, axis=0), the same values, faster for a few rows (sorts `stacked` in place)."""
    n = len(stacked)
    return sorted_rows_mean(stacked, (n - 1) // 2, n // 2 + 1)


def fedavg(results: Results, reference: NDArrays | None = None) -> NDArrays:
    """Weighted mean of the updates by their weights (Flower's `aggregate`)."""
    return _weighted_mean(results)


def median(results: Results, reference: NDArrays | None = None) -> NDArrays:
    """Coordinate-wise median (Flower's `aggregate_median`)."""
    n = len(results)
    return _sorted_mean(results, (n - 1) // 2, n // 2 + 1)


def trimmed(results: Results, reference: NDArrays | None = None, *, beta: float) -> NDArrays:
    """Coordinate-wise mean after cutting int(beta * n) values at each end (Flower's `aggregate_trimmed_avg`)."""
    cut = int(beta * len(results))
    return _sorted_mean(results, cut, len(results) - cut)


def krum_scores(updates: list[NDArrays], f: int) -> np.ndarray:
    """Krum score of each update: the sum of squared distances to its n - f - 2 nearest other updates."""
    keep = len(updates) - f - 2
    # Each sorted row starts with a 0 that is the update itself (or an identical copy: the sum is the same).
    return np.sort(_sq_distances(updates), axis=1)[:, 1 : keep + 1].sum(axis=1)


def krum(results: Results, reference: NDArrays | None = None, *, f: int) -> NDArrays:
    """Krum (Blanchard et al. 2017): the update with the lowest Krum score."""
    updates = [update for update, _ in results]
    best = updates[int(np.argmin(krum_scores(updates, f)))]
    return [np.array(a, dtype=_out_dtype(a)) for a in best]  # a copy: never alias an input


def multikrum(results: Results, reference: NDArrays | None = None, *, f: int, m: int) -> NDArrays:
    """Multi-Krum: weighted mean of the m updates with the lowest Krum scores."""
    scores = krum_scores([update for update, _ in results], f)
    return _weighted_mean([results[i] for i in np.argsort(scores, kind="stable")[:m]])


def bulyan(results: Results, reference: NDArrays | None = None, *, f: int) -> NDArrays:
    """Bulyan (El Mhamdi et al. 2018) over Krum, by Flower's `aggregate_bulyan`."""
    # Imported here: `import flwr` takes ~1 s and the CLI imports this module.
    from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum

    # aggregate_bulyan pops from the list it is given: hand it a copy.
    return aggregate_bulyan(list(results), num_malicious=f, aggregation_rule=aggregate_krum, to_keep=0)


def gossip_coefficients(weights: list[float], *, alpha: float = 0.5) -> list[float]:
    """The coefficients in gossip's sum of the reference and the neighbours (the weights do not count)."""
    neighbours = len(weights) - 1
    if not neighbours:  # nothing to mix in
        return [1.0]
    return [1.0 - alpha] + [alpha / neighbours] * neighbours


def gossip(results: Results, reference: NDArrays, *, alpha: float = 0.5) -> NDArrays:
    """(1 - alpha) * reference + alpha * unweighted mean of the neighbours' updates (results[1:])."""
    return _combine([reference, *(update for update, _ in results[1:])],
                    gossip_coefficients([weight for _, weight in results], alpha=alpha))


def clippedgossip(results: Results, reference: NDArrays, *, tau: float) -> NDArrays:
    """ClippedGossip (He, Karimireddy & Jaggi 2022): x + sum_j (1/n) clip(x_j - x, tau).

    clip(v, tau) = v * min(1, tau / ||v||) over the whole flattened update; j runs over all n results,
    the node's own included. Written as one linear combination, (1 - sum_j c_j) x + sum_j c_j x_j.
    """
    updates = [reference, *(update for update, _ in results)]
    dist = np.sqrt(_sq_distances(updates)[0, 1:])
    coefs = tau / np.maximum(dist, tau) / len(results)  # min(1, tau/||v||) / n, no division by 0
    return _combine(updates, [1.0 - coefs.sum(), *coefs])
