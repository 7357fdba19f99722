"""A learner that is not a torch module: a scikit-learn random forest behind the Learner interface.
It has no weight vector to average, so it learns from peers only through their predictions
(distillation: pseudo-labels on the probe set) or their synthetic samples."""
from __future__ import annotations

import numpy as np

from .learner import Learner, NDArrays, Samples


class ForestLearner(Learner):
    supports_weights = False

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int, *, architecture: str = "forest",
                 trees: int = 50, seed: int = 0) -> None:
        self.architecture = architecture
        self.x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        self.y = np.asarray(y, dtype=np.int64)
        self.num_examples = len(self.y)
        self.num_classes = num_classes
        self.trees, self.seed = trees, seed
        self._teacher: Samples | None = None  # the probe set, pseudo-labelled by the peers' consensus
        self.fit(1)

    def get_weights(self) -> NDArrays:
        return []

    def set_weights(self, weights: NDArrays) -> None:
        raise ValueError("a forest has no weight vector; it learns from predictions or samples")

    def fit(self, epochs: int, extra: Samples | None = None) -> dict[str, float]:
        from sklearn.ensemble import RandomForestClassifier

        parts = [(self.x, self.y, np.ones(self.num_examples))]
        for more in (extra, self._teacher):
            if more is not None and len(more.y):
                parts.append((np.asarray(more.x, np.float32).reshape(len(more.y), -1), more.y,
                              np.full(len(more.y), more.weight)))
        x, y, w = (np.concatenate(p) for p in zip(*parts))
        # A forest trains to completion in one call; `epochs` has no meaning here.
        self.model = RandomForestClassifier(self.trees, random_state=self.seed, n_jobs=1).fit(x, y, sample_weight=w)
        return {}

    def distill(self, x: np.ndarray, target: np.ndarray, temperature: float, epochs: int) -> None:
        self._teacher = Samples(x, np.argmax(target, axis=1), weight=1.0)
        self.fit(1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        proba = np.zeros((len(x), self.num_classes))
        # A non-IID node may never have seen some classes: those columns stay at probability 0.
        proba[:, self.model.classes_] = self.model.predict_proba(np.asarray(x, np.float32).reshape(len(x), -1))
        return np.log(proba + 1e-3).astype(np.float32)
