"""Reference torch models by name, built for a dataset's input shape and class count."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def _logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def _mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def _cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"model cnn needs image input (channels, height, width), the dataset gives {input_shape}")
    # Adaptive pooling makes the same network fit 8x8 digits and 28x28 Fashion-MNIST.
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(32 * 16, num_classes),
    )


MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "logreg": _logreg,
    "mlp": _mlp,
    "mlp-wide": lambda shape, classes: _mlp(shape, classes, hidden=512),
    "cnn": _cnn,
}
# Every architecture a node can run: the torch models plus a scikit-learn forest (node.learning.forest).
ARCHITECTURES = (*MODELS, "forest")
# `--model mixed`: one of each, assigned to nodes in turn.
MIXED = ("logreg", "mlp", "mlp-wide", "cnn", "forest")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """The same (name, shape, classes, seed) always gives the same initial parameters."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](tuple(input_shape), num_classes)
