"""Logit rules: a list of (n_probe, n_classes) matrices -> one matrix, for distillation.

Signature: `rule(logits, **params) -> np.ndarray`; `Rule.__call__` checks the matrices share one shape.
"""
from __future__ import annotations

import numpy as np


def logit_mean(logits: list[np.ndarray]) -> np.ndarray:
    """Elementwise mean of the logit matrices."""
    return np.mean(np.stack(logits), axis=0)


def logit_median(logits: list[np.ndarray]) -> np.ndarray:
    """Elementwise median of the logit matrices."""
    return np.median(np.stack(logits), axis=0)
