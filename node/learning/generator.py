"""A class-conditional generator of synthetic samples: one diagonal Gaussian per class.

Why this one: it is fitted in closed form from a node's private data (a mean and a variance per
class and feature), samples in microseconds, works for any input shape, and reveals only
per-class first and second moments — much less than the records themselves, and easy to state
on a data card. Richer generators (mixtures, VAEs) can replace it behind `sample`.

With differential privacy (`fit_generator` with a Privacy that is on) the moments are released by the
Gaussian mechanism instead, once: every feature lies in the data's public value range [low, high], so
with z = x - (low + high) / 2 and h = (high - low) / 2 one record moves its class's count by 1, its
class's feature sums by at most h·sqrt(d) (L2) and the features' sums of squares by at most h²·sqrt(d).
Each of the three gets Gaussian noise of σ times its sensitivity; three Gaussian mechanisms of one σ
compose (Rényi DP) to one of σ / sqrt(3), which `moments_epsilon` accounts. The classes get the noisy
means and one pooled noisy variance (a class's own second moment from few records would be mostly
noise); a class whose noisy count is under 3σ is left out. Sampling afterwards is post-processing:
every round's samples together cost that one ε."""
from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .privacy import Privacy

NAME = "class-conditional diagonal Gaussian"
QUERIES = 3  # counts, sums, sums of squares


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


def fit_generator(x: np.ndarray, y: np.ndarray, value_range: tuple[float, float], num_classes: int,
                  privacy: Privacy) -> GaussianClassGenerator:
    """The generator of (x, y): exact moments, or noisy ones when `privacy` is on (`moments_noise`'s σ,
    drawn from the operating system's randomness: noise an observer can regenerate protects nothing)."""
    if not privacy.on:
        return GaussianClassGenerator(x, y, value_range)
    sigma = moments_noise(privacy)
    rng = np.random.default_rng(secrets.randbits(128))
    low, high = value_range
    half = max((high - low) / 2, 1e-12)
    z = x.reshape(len(x), -1).astype(np.float64) - (low + high) / 2
    d = z.shape[1]
    counts = np.bincount(y, minlength=num_classes) + sigma * rng.standard_normal(num_classes)
    sums = np.stack([z[y == c].sum(axis=0) for c in range(num_classes)])
    sums += sigma * half * math.sqrt(d) * rng.standard_normal(sums.shape)
    squares = (z ** 2).sum(axis=0) + sigma * half ** 2 * math.sqrt(d) * rng.standard_normal(d)
    kept = np.flatnonzero(counts >= max(1.0, 3 * sigma))
    generator = GaussianClassGenerator.__new__(GaussianClassGenerator)
    generator.classes, generator.shape, generator.low, generator.high = kept, x.shape[1:], low, high
    n = max(counts[kept].sum(), 1.0)
    generator.mean = np.clip(sums[kept] / counts[kept, None], -half, half) + (low + high) / 2
    spread = np.clip(squares / n - (sums[kept].sum(axis=0) / n) ** 2, 1e-6 * half ** 2, half ** 2)
    generator.std = np.repeat(np.sqrt(spread)[None], len(kept), axis=0)
    return generator


def moments_noise(privacy: Privacy) -> float:
    """σ as given, or the smallest that keeps the release within the target ε at δ."""
    if privacy.noise > 0:
        return privacy.noise
    from opacus.accountants.utils import get_noise_multiplier

    with _loose_bounds_quiet():
        return math.sqrt(QUERIES) * get_noise_multiplier(target_epsilon=privacy.epsilon, target_delta=privacy.delta,
                                                         sample_rate=1.0, steps=1, accountant="rdp")


def moments_spent(privacy: Privacy) -> dict[str, float]:
    """What releasing the noisy moments spends, as a DP-SGD learner reports it (no steps: one release)."""
    sigma = moments_noise(privacy)
    return {"epsilon": moments_epsilon(sigma, privacy.delta), "noise_multiplier": sigma, "dp_steps": 0}


def moments_epsilon(sigma: float, delta: float) -> float:
    """The ε at δ of releasing the noisy moments once: one Gaussian mechanism of σ / sqrt(3)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(sigma / math.sqrt(QUERIES), 1.0, 1)]
    with _loose_bounds_quiet():
        return accountant.get_epsilon(delta)


@contextmanager
def _loose_bounds_quiet() -> Iterator[None]:
    """Without Opacus' warning that a small σ's ε is best at its largest Rényi order: the bound is
    looser than it could be, and still a bound (and the search for σ tries small ones on its way)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield
