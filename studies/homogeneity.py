"""How alike are many models? The bias-variance decomposition of their predictions on held-out inputs,
with the variance split by where it comes from, and how often two models disagree.

The models of one setting form a grid: initialisation seed s (S of them) x data draw d (D of them: what
the model was trained on). Each gives logits z[s, d, x, :] on every held-out input x with label y[x].
A loss is a convex potential A on a "mean space" θ(z):

- `ce`: θ = log softmax(z), A(θ) = log Σ_k exp θ_k (0 for every model), loss = A(θ) − θ_y. The central
  prediction is the normalised geometric mean softmax(θ̄) (Yang et al. 2020, "Rethinking bias-variance
  trade-off"): bias² = −log softmax(θ̄)_y, variance = E[KL(softmax(θ̄) ‖ p)] = −A(θ̄).
- `mse` on one-hot targets: θ = softmax(z), A(θ) = ||θ||², loss = ||θ − e_y||². The central prediction
  is the mean p̄: bias² = ||p̄ − e_y||², variance = E||p − p̄||².

Both ways risk = bias² + variance exactly (the test labels are the targets: no separate noise term),
and the variance is a Jensen gap, E A(θ) − A(E θ), averaged over the inputs. A Jensen gap splits like
the law of total variance. Conditioning on the data first:

    variance = [E_d A(E_s θ) − A(θ̄)]  +  E_d [E_s A(θ) − A(E_s θ)]
             =       sampling          +   initialisation given the data

and the second term splits again, symmetrically (the two-way ANOVA of Adlam & Pennington 2020):
initialisation = E_s A(E_d θ) − A(θ̄), interaction = what is left. With squared error these are the
classical ANOVA main effects and interaction (each ≥ 0); with cross-entropy the interaction is the
remainder and may be slightly negative. On a finite grid the main effects are plug-in estimates and
carry 1/S (sampling) or 1/D (initialisation) of the interaction with them.

Pure: arrays in, numbers out; no training, no I/O."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LOSSES = ("ce", "mse")


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _logsumexp(theta: np.ndarray) -> np.ndarray:
    top = theta.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(theta - top).sum(axis=-1, keepdims=True)))[..., 0]


class _CrossEntropy:
    @staticmethod
    def theta(z: np.ndarray) -> np.ndarray:
        return log_softmax(z)

    @staticmethod
    def potential(theta: np.ndarray) -> np.ndarray:
        return _logsumexp(theta)

    @staticmethod
    def loss(theta: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _logsumexp(theta) - (theta * np.eye(theta.shape[-1])[y]).sum(-1)


class _SquaredError:
    @staticmethod
    def theta(z: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(z))

    @staticmethod
    def potential(theta: np.ndarray) -> np.ndarray:
        return (theta ** 2).sum(-1)

    @staticmethod
    def loss(theta: np.ndarray, y: np.ndarray) -> np.ndarray:
        return ((theta - np.eye(theta.shape[-1])[y]) ** 2).sum(-1)


_LOSS = {"ce": _CrossEntropy, "mse": _SquaredError}


@dataclass(frozen=True)
class Decomposition:
    """Each averaged over the held-out inputs. risk = bias2 + variance;
    variance = sampling + initialisation + interaction."""
    risk: float
    bias2: float
    variance: float
    sampling: float
    initialisation: float
    interaction: float

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 9) for k, v in asdict(self).items()}


def decompose(logits: np.ndarray, y: np.ndarray, loss: str = "ce") -> Decomposition:
    """`logits` shaped (seeds S, data draws D, inputs X, classes K) (log-probabilities will do), `y` the
    X labels; the decomposition of the module docstring under `loss` ("ce" or "mse")."""
    if loss not in _LOSS:
        raise ValueError(f"unknown loss {loss!r}; available: {', '.join(LOSSES)}")
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 4 or z.shape[2] != len(y):
        raise ValueError(f"logits must be shaped (seeds, data draws, inputs={len(y)}, classes), got {z.shape}")
    f = _LOSS[loss]
    theta, y = f.theta(z), np.asarray(y)
    centre = theta.mean(axis=(0, 1))
    at_centre = f.potential(centre).mean()

    def gap(mean: np.ndarray) -> float:  # E A(a mean of θ) − A(θ̄): a Jensen gap
        return float(f.potential(mean).mean() - at_centre)
    variance = float(f.potential(theta).mean() - at_centre)
    sampling, initialisation = gap(theta.mean(axis=0)), gap(theta.mean(axis=1))
    return Decomposition(risk=float(f.loss(theta, y).mean()), bias2=float(f.loss(centre, y).mean()),
                         variance=variance, sampling=sampling, initialisation=initialisation,
                         interaction=variance - sampling - initialisation)


def disagreement_matrix(labels: np.ndarray) -> np.ndarray:
    """labels (models M, inputs X) of predicted classes: the M x M rates at which two models predict
    different classes."""
    labels = np.asarray(labels)
    return (labels[:, None, :] != labels[None, :, :]).mean(axis=2)


def mean_disagreement(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """The mean disagreement rate over pairs of distinct models: within `a` (models x inputs of predicted
    classes), or between a model of `a` and one of `b`. NaN when there is no pair."""
    a = np.asarray(a)
    if b is None:
        m = disagreement_matrix(a)
        return float(m[~np.eye(len(a), dtype=bool)].mean()) if len(a) > 1 else float("nan")
    b = np.asarray(b)
    return float((a[:, None, :] != b[None, :, :]).mean()) if len(a) and len(b) else float("nan")
