"""How a torch learner trains: the MLP's hidden sizes, the optimizer and its settings, batches, DP-SGD."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .privacy import NO_PRIVACY, Privacy

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class Training:
    """How a torch learner trains. The defaults are the reference setup (MLP 128 hidden, Adam 0.01,
    batch 32, shuffled); e.g. the usual FedAvg baselines' MLP 64-32-10 with SGD lr 0.05 momentum 0.9
    is Training(hidden=(32,), optimizer="sgd", lr=0.05, momentum=0.9) on digits."""

    hidden: tuple[int, ...] = (128,)  # the hidden layer sizes of the `mlp` model
    optimizer: str = "adam"  # one of OPTIMIZERS
    lr: float = 1e-2
    momentum: float = 0.0  # SGD's
    weight_decay: float = 0.0
    batch_size: int = 32
    shuffle: bool = True  # a fresh order of the examples every epoch (seeded per node)
    privacy: Privacy = NO_PRIVACY  # DP-SGD on the private set (off by default)

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults."""
        return {k: v for k, v in asdict(self).items() if v != getattr(DEFAULT_TRAINING, k)}


DEFAULT_TRAINING = Training()
