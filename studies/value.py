"""What peer j's data is worth to model i: the analysis, on utilities the caller measured.

A network of N models has an N x N answer. Model i's utility with a coalition S of *other* peers is
its held-out accuracy when the network consists of S and i itself; the empty coalition is model i
trained alone. So every model has its own cooperative game over the other peers, and its Shapley
values are a column of the matrix V[j, i] = the value of peer j's data to model i. A column sums to
what the network added to model i (its accuracy in the whole network minus alone); the diagonal
(what i's own data is worth to i) is not part of any game and is NaN, as is the column of a model
that is not valued (an attacker's).

Pure: a game is `game(i, S) -> float`; studies/value_study.py runs the simulations behind it and
caches them by network, so the games of different models share every run they can.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

Game = Callable[[int, frozenset[int]], float]  # (model i, coalition of peers other than i) -> utility


def _empty(n: int) -> np.ndarray:
    return np.full((n, n), np.nan)


def _others(i: int, n: int) -> list[int]:
    return [j for j in range(n) if j != i]


def exact_shapley(game: Game, n: int, models: Iterable[int]) -> np.ndarray:
    """V[j, i] by enumerating every coalition of model i's game: 2^(N-1) utilities per model."""
    values = _empty(n)
    for i in models:
        others = _others(i, n)
        m = len(others)
        weight = [math.factorial(s) * math.factorial(m - 1 - s) / math.factorial(m) for s in range(m)]
        utility = {frozenset(c): game(i, frozenset(c)) for size in range(m + 1) for c in combinations(others, size)}
        for j in others:
            values[j, i] = sum(weight[len(s)] * (utility[s | {j}] - u) for s, u in utility.items() if j not in s)
    return values


def leave_one_out(game: Game, n: int, models: Iterable[int]) -> np.ndarray:
    """V[j, i] = model i's utility in the whole network minus its utility without peer j."""
    values = _empty(n)
    for i in models:
        everyone = frozenset(_others(i, n))
        grand = game(i, everyone)
        for j in everyone:
            values[j, i] = grand - game(i, everyone - {j})
    return values


@dataclass(frozen=True)
class MonteCarlo:
    values: np.ndarray  # the mean marginal contribution, V[j, i]
    stderr: np.ndarray  # its standard error, per entry
    permutations: int  # sampled
    truncated: float  # the share of marginal contributions truncated (taken as 0, not measured)

    @property
    def max_stderr(self) -> float:
        """The convergence measure: the largest standard error over the valued entries."""
        valued = self.stderr[~np.isnan(self.stderr)]
        return float(valued.max()) if valued.size else math.nan


def orders(n: int, seed: int | Sequence[int], antithetic: bool = False) -> Iterator[np.ndarray]:
    """The orders of the N peers that monte_carlo_shapley samples, in turn (`antithetic`: each
    random order followed by its reverse)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        yield order
        if antithetic:
            yield order[::-1]


def monte_carlo_shapley(game: Game, n: int, models: Iterable[int], *, permutations: int, tolerance: float = 0.0,
                        seed: int | Sequence[int] = 0, max_seconds: float | None = None,
                        antithetic: bool = False) -> MonteCarlo:
    """Permutation sampling with truncation (TMC-Shapley, Ghorbani & Zou 2019): along a random order
    of the peers, each one's marginal contribution to model i; once the coalition's utility is within
    `tolerance` of the whole network's, the rest of the order contributes 0 without being measured.
    One order of all N peers per sample serves every model (model i skips itself), so the models'
    coalitions overlap and a cached game measures each network once. Stops after `permutations`
    samples or `max_seconds` (at least one sample). `antithetic`: every second order is the one before
    reversed, so a peer sampled early in one is late in the other (less variance from few orders)."""
    models, sampled = list(models), orders(n, seed, antithetic)
    grand = {i: game(i, frozenset(_others(i, n))) for i in models}
    sums, squares = np.zeros((n, n)), np.zeros((n, n))
    count = truncated = total = 0
    started = time.perf_counter()
    while count < permutations and (count == 0 or max_seconds is None or time.perf_counter() - started < max_seconds):
        order = next(sampled)
        for i in models:
            coalition, before = frozenset(), game(i, frozenset())
            for j in (int(j) for j in order if j != i):
                total += 1
                if abs(grand[i] - before) < tolerance:
                    truncated += 1
                    continue
                after = game(i, coalition | {j})
                sums[j, i] += after - before
                squares[j, i] += (after - before) ** 2
                coalition, before = coalition | {j}, after
        count += 1
    mask = _empty(n)
    mask[:, models] = 0.0
    np.fill_diagonal(mask, np.nan)
    mean = sums / count + mask
    variance = np.maximum(squares / count - (sums / count) ** 2, 0.0) * count / (count - 1) if count > 1 else np.inf
    return MonteCarlo(mean, np.sqrt(variance / count) + mask, count, truncated / max(total, 1))


def efficient(values: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Each column scaled to sum to its model's gain (accuracy in the whole network minus alone), as
    Shapley values do (efficiency); a column whose sum is 0 or of the other sign is left as it is."""
    sums = np.nansum(values, axis=0)
    ok = (sums != 0) & (np.sign(sums) == np.sign(gains))
    return values * np.where(ok, gains / np.where(ok, sums, 1.0), 1.0)[None, :]


def peer_totals(values: np.ndarray) -> np.ndarray:
    """Each peer's value summed over the models it was valued for."""
    return np.nansum(values, axis=1)


def spearman(estimate: np.ndarray, exact: np.ndarray) -> float:
    """Spearman's rank correlation of two value matrices (or vectors) over the entries both define;
    NaN when fewer than three entries or either side is constant."""
    from scipy.stats import spearmanr  # scikit-learn's dependency: only when comparing

    a, b = np.ravel(estimate), np.ravel(exact)
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 3 or np.ptp(a[both]) == 0 or np.ptp(b[both]) == 0:
        return math.nan
    return float(spearmanr(a[both], b[both]).statistic)
