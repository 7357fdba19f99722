"""Peer reputation: how far each peer's contributions sit from a robust consensus, remembered
over time. A peer whose score falls below the threshold is banned: its messages are then
rejected by the protocol layer (reason `banned`) before any rule sees them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def outlier_ratios(vectors: list[np.ndarray], min_scale: float = 1e-12) -> np.ndarray:
    """Each vector's distance to the coordinate-wise median of all, over the median such distance
    (at least `min_scale`). The median is a consensus that a minority of liars cannot move far,
    whatever rule aggregates."""
    return stacked_outlier_ratios(np.stack([np.asarray(v, dtype=np.float64).ravel() for v in vectors])[None],
                                  min_scale)[0]


def stacked_outlier_ratios(stacked: np.ndarray, min_scale: float = 1e-12) -> np.ndarray:
    """outlier_ratios of many sets of vectors at once (the simulator's batched folds): `stacked` is
    (sets, vectors, length) float64; the same numbers as one set at a time."""
    distances = np.linalg.norm(stacked - _medians(stacked)[:, None], axis=2)
    return distances / np.maximum(_medians(distances), min_scale)[:, None]


def _medians(stacked: np.ndarray) -> np.ndarray:
    """The coordinate-wise median of each set (axis 1; as aggregation.weights.rows_median), sorted in
    a copy along a contiguous last axis: numpy sorts a strided axis one copied slice at a time, 2x
    slower for millions of slices of a few values."""
    n = stacked.shape[1]
    ordered = np.moveaxis(stacked, 1, -1).copy(order="C")
    ordered.sort(axis=-1)
    return ordered[..., (n - 1) // 2:n // 2 + 1].mean(axis=-1)


@dataclass
class Reputation:
    threshold: float = 0.0  # ban a peer whose score drops below this; 0 never bans
    outlier_ratio: float = 3.0  # a contribution this many times the typical distance away is an outlier
    decay: float = 0.8  # weight of the past in the score
    scores: dict[bytes, float] = field(default_factory=dict)

    def observe(self, peer: bytes, ratio: float) -> bool:
        """Record one contribution; True if the peer is now to be banned."""
        good = float(ratio <= self.outlier_ratio)
        score = self.decay * self.scores.get(peer, 1.0) + (1 - self.decay) * good
        self.scores[peer] = score
        return score < self.threshold
