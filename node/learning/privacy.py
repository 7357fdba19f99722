"""A node's differential privacy settings (DP-SGD, docs/PRIVACY.md): plain numbers, no torch, so the
CLI, the specs and config.json carry them; node/learning/private_sgd.py runs them with Opacus."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Privacy:
    """Off unless `noise` or `epsilon` is given. With `noise` (σ), each step adds Gaussian noise of
    σ·clip; with only `epsilon`, σ is the smallest that keeps ε(δ) ≤ epsilon over `epochs` planned
    epochs. `epsilon`, when given, is also the budget: a node past it publishes no more."""

    noise: float = 0.0  # the noise multiplier σ (0: from the target ε)
    clip: float = 1.0  # each example's gradient is clipped to this L2 norm
    epsilon: float = 0.0  # the target ε, the node's budget (0: none)
    delta: float = 1e-5
    epochs: int = 0  # the epochs a target ε is planned for (rounds × local epochs)

    @property
    def on(self) -> bool:
        return self.noise > 0 or self.epsilon > 0


NO_PRIVACY = Privacy()
