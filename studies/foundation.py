"""Which behaviours of many downstream models come from the foundation they share: the analysis, on
the models' held-out outputs (studies/foundation_study.py runs the simulations behind them).

M models answer the same n held-out inputs. With E[m, x] = 1 when model m gets input x wrong:

- a model's error rate is mean_x E[m, x]; the mean error is its mean over the models;
- **inherited** errors: the inputs every model gets wrong, rate I = mean_x prod_m E[m, x];
- **idiosyncratic** errors: a model's errors on inputs some other model gets right, rate
  D = mean_m mean_x E[m, x] (1 - prod_m' E[m', x]); so the mean error is exactly I + D, and the
  inherited share is I / (I + D). One model alone has only inherited errors (D = 0). Models that
  err independently, each at its own rate e_m, would share prod_m e_m of the inputs: the inherited
  rate beyond that is what their errors have in common (worse models share more by chance alone).
- agreement: the share of inputs on which two models predict the same class, averaged over pairs;
  and each model's agreement with a reference predictor (a nearest-centroid on the shared features,
  fitted on the public probe set alone: what the features give without any private data);
- prediction variance: per input, the variance across models of the predicted class probabilities,
  summed over the classes and averaged over the inputs (0 when all models answer alike); the share of
  it the shared encoder removes is 1 - variance with it / variance without it.

Pure: arrays in, numbers out.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def error_split(predictions: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """`predictions`: (models, inputs) class ids; `y`: (inputs,). The module docstring defines the terms;
    `some_wrong` is the share of inputs at least one model gets wrong."""
    wrong = predictions != y[None, :]
    every = wrong.all(axis=0)
    mean_error = float(wrong.mean())
    inherited = float(every.mean())
    return {"mean_error": mean_error, "inherited": inherited,
            "idiosyncratic": float((wrong & ~every[None, :]).mean()),
            "some_wrong": float(wrong.any(axis=0).mean()),
            "inherited_share": inherited / mean_error if mean_error else 0.0,
            "inherited_if_independent": float(np.prod(wrong.mean(axis=1)))}


def inherited_also_by(predictions: np.ndarray, y: np.ndarray, reference: np.ndarray) -> float:
    """The share of the inherited errors (inputs every model gets wrong) that `reference` gets wrong
    too (NaN when there are none)."""
    every = (predictions != y[None, :]).all(axis=0)
    return float((reference[every] != y[every]).mean()) if every.any() else float("nan")


def pairwise_agreement(predictions: np.ndarray) -> float:
    """The share of inputs on which two models predict the same class, averaged over all pairs (1 for
    one model)."""
    pairs = list(combinations(range(len(predictions)), 2))
    if not pairs:
        return 1.0
    return float(np.mean([(predictions[a] == predictions[b]).mean() for a, b in pairs]))


def agreement_with(predictions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each model's share of inputs on which it predicts what `reference` predicts."""
    return (predictions == reference[None, :]).mean(axis=1)


def prediction_variance(probs: np.ndarray) -> float:
    """`probs`: (models, inputs, classes). Per input, the variance across models of each class's
    probability, summed over classes; averaged over inputs."""
    return float(probs.var(axis=0).sum(axis=-1).mean())


def variance_removed(with_foundation: float, without: float) -> float:
    """The share of the prediction variance without the shared encoder that it removes (negative when
    it adds variance; NaN when there was none to remove)."""
    return 1.0 - with_foundation / without if without > 0 else float("nan")


def nearest_centroid(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray, num_classes: int) -> np.ndarray:
    """The class of the nearest class mean of (x_fit, y_fit), for each row of x (a class absent from
    y_fit is never predicted)."""
    present = np.array([c for c in range(num_classes) if (y_fit == c).any()])
    centroids = np.stack([x_fit[y_fit == c].mean(axis=0) for c in present])
    distances = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=-1)
    return present[distances.argmin(axis=1)]


def measures(logits: np.ndarray, y: np.ndarray, reference: np.ndarray) -> dict:
    """All of the above for one setting: `logits` (models, inputs, classes), `reference` the
    probe-only predictor's classes."""
    predictions = logits.argmax(axis=-1)
    accuracy = (predictions == y[None, :]).mean(axis=1)
    with_reference = agreement_with(predictions, reference)
    return {
        "accuracy": {"models": [float(a) for a in accuracy], "mean": float(accuracy.mean()),
                     "reference": float((reference == y).mean())},
        "errors": {**error_split(predictions, y),
                   "inherited_also_by_reference": inherited_also_by(predictions, y, reference)},
        "agreement": {"between_models": pairwise_agreement(predictions),
                      "with_reference": float(with_reference.mean()),
                      "with_reference_per_model": [float(a) for a in with_reference]},
        "prediction_variance": prediction_variance(probabilities(logits)),
    }
