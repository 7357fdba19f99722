"""Peer reputation: how far each peer's contributions sit from a robust consensus, remembered
over time. A peer whose score falls below the threshold is banned: its messages are then
rejected by the protocol layer (reason `banned`) before any rule sees them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from manymodels.aggregation.weights import rows_median


def outlier_ratios(vectors: list[np.ndarray], min_scale: float = 1e-12) -> np.ndarray:
    """Each vector's distance to the coordinate-wise median of all, over the median such distance
    (at least `min_scale`). The median is a consensus that a minority of liars cannot move far,
    whatever rule aggregates."""
    return stacked_outlier_ratios(np.stack([np.asarray(v, dtype=np.float64).ravel() for v in vectors])[None],
                                  min_scale)[0]


def stacked_outlier_ratios(stacked: np.ndarray, min_scale: float = 1e-12) -> np.ndarray:
    """outlier_ratios of many sets of vectors at once (the simulator's batched folds): `stacked` is
    (sets, vectors, length) float64; the same numbers as one set at a time."""
    median = rows_median(np.moveaxis(stacked.copy(), 1, 0))
    distances = np.linalg.norm(stacked - median[:, None], axis=2)
    scale = rows_median(np.moveaxis(distances.copy(), 1, 0))
    return distances / np.maximum(scale, min_scale)[:, None]


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
