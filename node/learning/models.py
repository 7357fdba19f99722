"""Reference torch models by name, built for a dataset's input shape and class count."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def _logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def _mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (128,)) -> nn.Module:
    sizes = (math.prod(input_shape), *hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    for width_in, width_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))


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
    "mlp-wide": lambda shape, classes: _mlp(shape, classes, hidden=(512,)),
    "cnn": _cnn,
}
# Every architecture a node can run: the torch models plus a scikit-learn forest (node.learning.forest).
ARCHITECTURES = (*MODELS, "forest")
# `--model mixed`: one of each, assigned to nodes in turn.
MIXED = ("logreg", "mlp", "mlp-wide", "cnn", "forest")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int,
                hidden: tuple[int, ...] | None = None) -> nn.Module:
    """The same (name, shape, classes, seed, hidden) always gives the same initial parameters;
    `hidden`: the hidden layer sizes of `mlp` (by default one layer of 128)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        # the CPU generator alone: torch.manual_seed also queues lazy accelerator seeding, which
        # records a stack trace each call (~1 ms, 20,000 times in a 10,000-node simulation)
        torch.default_generator.manual_seed(seed)
        if name == "mlp" and hidden is not None:
            return _mlp(tuple(input_shape), num_classes, tuple(hidden))
        return MODELS[name](tuple(input_shape), num_classes)
