"""The Learner interface: a node's model and data behind get/set weights, fit, evaluate, predict,
and distill (learn from peers' predictions on a shared probe set)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

NDArrays = list[np.ndarray]


@dataclass(frozen=True)
class Samples:
    """Extra labelled samples (e.g. peers' synthetic ones) to train on beside the private data."""
    x: np.ndarray
    y: np.ndarray
    weight: float  # loss weight of each sample, relative to 1 for a private one


class Learner(ABC):
    architecture: str  # peers fold weights only from learners of the same architecture
    num_examples: int  # size of the private training set; the weight of its updates
    supports_weights: bool = True  # False for learners without a parameter vector (e.g. a forest)

    @abstractmethod
    def get_weights(self) -> NDArrays:
        """Copies of the current parameters, one array per tensor."""

    @abstractmethod
    def set_weights(self, weights: NDArrays) -> None:
        """Load parameters (copied; the caller's arrays may be read-only views of received bytes)."""

    @abstractmethod
    def fit(self, epochs: int, extra: Samples | None = None) -> dict[str, float]:
        """Train on the private data (and `extra` samples); returns metrics such as the mean loss."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits, shape (len(x), num_classes)."""

    @abstractmethod
    def distill(self, x: np.ndarray, target: np.ndarray, temperature: float, epochs: int) -> None:
        """Move the model's temperature-scaled predictions on `x` towards `target`, the teacher's
        log soft labels: rows of log_softmax(teacher_logits / temperature)."""

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        logits = self.predict(x)
        return {"accuracy": float(np.mean(np.argmax(logits, axis=1) == y))}


def log_soft_labels(logits: np.ndarray, temperature: float) -> np.ndarray:
    """log_softmax(logits / temperature) per row, in float32."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(np.float32)
