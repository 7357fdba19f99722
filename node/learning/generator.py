"""A class-conditional generator of synthetic samples: one diagonal Gaussian per class.

Why this one: it is fitted in closed form from a node's private data (a mean and a variance per
class and feature), samples in microseconds, works for any input shape, and reveals only
per-class first and second moments — much less than the records themselves, and easy to state
on a data card. Richer generators (mixtures, VAEs) can replace it behind `sample`."""
from __future__ import annotations

import numpy as np

NAME = "class-conditional diagonal Gaussian"


class GaussianClassGenerator:
    def __init__(self, x: np.ndarray, y: np.ndarray, value_range: tuple[float, float], shrink: float = 0.05) -> None:
        self.classes = np.unique(y)
        self.shape = x.shape[1:]
        flat = x.reshape(len(x), -1).astype(np.float64)
        self.mean = np.stack([flat[y == c].mean(axis=0) for c in self.classes])
        # Shrink each class's variance towards the pooled one: classes with few samples stay sane.
        pooled = flat.var(axis=0)
        self.std = np.sqrt(np.stack([(1 - shrink) * flat[y == c].var(axis=0) + shrink * pooled for c in self.classes]))
        self.low, self.high = value_range

    def sample(self, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.classes)
        noise = rng.standard_normal((k, per_class, self.mean.shape[1]))
        x = np.clip(self.mean[:, None, :] + self.std[:, None, :] * noise, self.low, self.high)
        y = np.repeat(self.classes, per_class)
        return x.reshape(k * per_class, *self.shape).astype(np.float32), y.astype(np.int64)
