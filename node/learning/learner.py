"""The Learner interface: a node's model and data behind get/set weights, fit, evaluate, predict."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

NDArrays = list[np.ndarray]


class Learner(ABC):
    architecture: str  # peers fold weights only from learners of the same architecture
    num_examples: int  # size of the private training set; the weight of its updates

    @abstractmethod
    def get_weights(self) -> NDArrays:
        """Copies of the current parameters, one array per tensor."""

    @abstractmethod
    def set_weights(self, weights: NDArrays) -> None:
        """Load parameters (copied; the caller's arrays may be read-only views of received bytes)."""

    @abstractmethod
    def fit(self, epochs: int) -> dict[str, float]:
        """Train on the private data; returns metrics such as the mean loss."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits, shape (len(x), num_classes)."""

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        logits = self.predict(x)
        return {"accuracy": float(np.mean(np.argmax(logits, axis=1) == y))}
