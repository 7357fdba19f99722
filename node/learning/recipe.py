"""A recipe for one node's learner: which data (a partition of an offline dataset), which
architecture, which seeds. Plain JSON, so a daemon can hand it to its worker process and keep
it in its home directory."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .datasets import Dataset, load_dataset
from .learner import Learner
from .partition import partition
from .probe import DEFAULT_SIZE, ProbeSet, split_probe


def make_learner(arch: str, x: np.ndarray, y: np.ndarray, data: Dataset, *, init_seed: int, seed: int,
                 lr: float = 1e-2, batch_size: int = 32) -> Learner:
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
    module = build_model(arch, data.input_shape, data.num_classes, seed=init_seed)
    return TorchLearner(module, x, y, architecture=arch, lr=lr, batch_size=batch_size, seed=seed)


@dataclass(frozen=True)
class LearnerRecipe:
    dataset: str = "digits"
    partition: str = "dirichlet:0.5"
    partition_id: int = 0
    num_partitions: int = 1
    model: str = "mlp"
    seed: int = 0  # the network's seed: same data split and same initial parameters everywhere
    lr: float = 1e-2
    batch_size: int = 32
    probe_size: int = DEFAULT_SIZE

    def to_json(self) -> dict:
        return asdict(self)

    def data(self) -> tuple[Dataset, ProbeSet, np.ndarray]:
        """The dataset (probe set removed), the probe set, and this node's training indices."""
        if not 0 <= self.partition_id < self.num_partitions:
            raise ValueError(f"partition id {self.partition_id} is not in 0..{self.num_partitions - 1}")
        probe, data = split_probe(load_dataset(self.dataset, seed=self.seed), self.probe_size)
        parts = partition(data.y_train, self.num_partitions, self.partition, seed=self.seed)
        return data, probe, parts[self.partition_id]

    def build(self) -> tuple[Learner, Dataset, ProbeSet, np.ndarray]:
        data, probe, index = self.data()
        learner = make_learner(self.model, data.x_train[index], data.y_train[index], data, init_seed=self.seed,
                               seed=self.seed * 1_000_003 + self.partition_id, lr=self.lr,
                               batch_size=self.batch_size)
        return learner, data, probe, index
