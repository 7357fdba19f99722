"""A recipe for one node's learner: which data (a partition of an offline dataset), which
architecture and how it trains (`Training`: hidden sizes, optimizer, batches), which seeds; or a
Flower client app (`client_app`), which loads its own data. Plain JSON, so a daemon can hand it to
its worker process and keep it in its home directory."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .datasets import Dataset, load_dataset
from .learner import Learner
from .partition import partition
from .privacy import NO_PRIVACY, Privacy
from .probe import DEFAULT_SIZE, ProbeSet, split_probe
from .training import DEFAULT_TRAINING, Training


def node_seed(network_seed: int, index: int) -> int:
    """The seed of node `index` (its data order, its generator) in a network seeded `network_seed`."""
    return network_seed * 1_000_003 + index


def make_learner(arch: str, x: np.ndarray, y: np.ndarray, data: Dataset, *, init_seed: int, seed: int,
                 training: Training = DEFAULT_TRAINING) -> Learner:
    """A learner of architecture `arch` on (x, y). Learners of one architecture built with one
    `init_seed` start from the same parameters, as decentralised SGD assumes."""
    # Imported here: a daemon imports this module but builds learners only in its worker process,
    # and torch alone is ~300 MB of memory.
    from .forest import ForestLearner
    from .models import ARCHITECTURES, build_model
    from .torch_learner import TorchLearner

    if arch == "forest":
        return ForestLearner(x, y, data.num_classes, seed=seed)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model {arch!r}; available: {', '.join(ARCHITECTURES)}")
    module = build_model(arch, data.input_shape, data.num_classes, seed=init_seed, hidden=training.hidden)
    return TorchLearner(module, x, y, architecture=arch, training=training, seed=seed)


@dataclass(frozen=True)
class LearnerRecipe:
    dataset: str = "digits"
    partition: str = "dirichlet:0.5"
    partition_id: int = 0
    num_partitions: int = 1
    model: str = "mlp"
    seed: int = 0  # the network's seed: same data split and same initial parameters everywhere
    # how the model trains, as in Training (flat here: config.json stays plain and old ones still load)
    hidden: tuple[int, ...] = DEFAULT_TRAINING.hidden
    optimizer: str = DEFAULT_TRAINING.optimizer
    lr: float = DEFAULT_TRAINING.lr
    momentum: float = DEFAULT_TRAINING.momentum
    weight_decay: float = DEFAULT_TRAINING.weight_decay
    batch_size: int = DEFAULT_TRAINING.batch_size
    shuffle: bool = DEFAULT_TRAINING.shuffle
    # DP-SGD, as in Privacy (off unless dp_noise or dp_epsilon is given)
    dp_noise: float = NO_PRIVACY.noise
    dp_clip: float = NO_PRIVACY.clip
    dp_epsilon: float = NO_PRIVACY.epsilon
    dp_delta: float = NO_PRIVACY.delta
    dp_epochs: int = NO_PRIVACY.epochs
    probe_size: int = DEFAULT_SIZE
    # A Flower client app as the learner (docs/FLOWER.md): FILE.py:ATTR (an absolute path, so a restart
    # from another directory finds it) or MODULE:ATTR, importable from `app_dir`. It gets partition_id
    # of num_partitions in its Context's node_config and loads its own data: dataset, partition, model,
    # the training fields and probe_size are then unused.
    client_app: str = ""
    run_config: str = ""  # its context.run_config overrides, "k=v k2=v2" as `flwr run --run-config`
    app_dir: str = ""  # where `node start` ran: MODULE:ATTR resolves from there, as under Flower

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> LearnerRecipe:
        return cls(**{**value, "hidden": tuple(value.get("hidden", DEFAULT_TRAINING.hidden))})

    @property
    def training(self) -> Training:
        return Training(tuple(self.hidden), self.optimizer, self.lr, self.momentum, self.weight_decay,
                        self.batch_size, self.shuffle, self.privacy)

    @property
    def privacy(self) -> Privacy:
        return Privacy(self.dp_noise, self.dp_clip, self.dp_epsilon, self.dp_delta, self.dp_epochs)

    @property
    def node_seed(self) -> int:
        return node_seed(self.seed, self.partition_id)

    def data(self) -> tuple[Dataset, ProbeSet, np.ndarray]:
        """The dataset (probe set removed), the probe set, and this node's training indices."""
        if not 0 <= self.partition_id < self.num_partitions:
            raise ValueError(f"partition id {self.partition_id} is not in 0..{self.num_partitions - 1}")
        probe, data = split_probe(load_dataset(self.dataset, seed=self.seed), self.probe_size)
        parts = partition(data.y_train, self.num_partitions, self.partition, seed=self.seed)
        return data, probe, parts[self.partition_id]

    def build(self, fit_config: dict[str, Any] | None = None
              ) -> tuple[Learner, Dataset | None, ProbeSet | None, np.ndarray | None]:
        """(learner, dataset, probe set, this node's training indices); a Flower client app keeps its
        data to itself: (learner, None, None, None). `fit_config` goes to a Flower client's train
        config (what the rule adds, e.g. FedProx's proximal_mu)."""
        if self.client_app:
            return self.flower_learner(fit_config), None, None, None
        data, probe, index = self.data()
        learner = make_learner(self.model, data.x_train[index], data.y_train[index], data, init_seed=self.seed,
                               seed=self.node_seed, training=self.training)
        return learner, data, probe, index

    def flower_learner(self, fit_config: dict[str, Any] | None = None) -> Learner:
        """The Flower client as the simulator runs node `partition_id`: seeded alike, and from the
        same first model on every node (init_seed = the network's seed)."""
        from .flower import FlowerLearner  # imports flwr (about a second): only in the worker process

        if self.app_dir and self.app_dir not in sys.path:
            sys.path.insert(0, self.app_dir)
        return FlowerLearner(self.client_app, partition_id=self.partition_id, num_partitions=self.num_partitions,
                             run_config=self.run_config, fit_config=fit_config,
                             seed=self.node_seed, init_seed=self.seed, run_id=self.seed + 1)
