"""Logit rules: a list of (n_probe, n_classes) matrices -> one matrix, for distillation.

Signature: `rule(logits, **params) -> np.ndarray`; `Rule.__call__` checks the matrices share one shape.
"""
from __future__ import annotations

import numpy as np

from .weights import rows_median


def logit_mean(logits: list[np.ndarray]) -> np.ndarray:
    """Elementwise mean of the logit matrices."""
    return np.mean(np.stack(logits), axis=0)


def logit_median(logits: list[np.ndarray]) -> np.ndarray:
    """Elementwise median of the logit matrices."""
    return rows_median(np.stack(logits))


def logit_trimmed(logits: list[np.ndarray], *, beta: float) -> np.ndarray:
    """Elementwise mean after cutting int(beta * n) values at each end."""
    stacked = np.sort(np.stack(logits), axis=0)
    cut = int(beta * len(logits))
    return stacked[cut:len(logits) - cut].mean(axis=0)


def logit_confidence(logits: list[np.ndarray]) -> np.ndarray:
    """Per probe sample, the mean of the models' logits weighted by each model's confidence
    (its top softmax probability on that sample): a model that does not know a class, as on a
    non-IID node, tends to be unsure there and counts less."""
    stacked = np.stack(logits).astype(np.float64)
    shifted = stacked - stacked.max(axis=2, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=2, keepdims=True)
    confidence = probs.max(axis=2, keepdims=True)  # (models, samples, 1)
    return (confidence * stacked).sum(axis=0) / confidence.sum(axis=0)


def logit_probmean(logits: list[np.ndarray]) -> np.ndarray:
    """log of the mean of exp(logits): on log soft labels, the arithmetic mean of the models'
    probabilities. Unlike the mean of logits (a geometric mean), one model's confident "no"
    cannot veto a class that another model knows."""
    stacked = np.stack(logits).astype(np.float64)
    top = stacked.max(axis=0)
    return top + np.log(np.exp(stacked - top).mean(axis=0))
