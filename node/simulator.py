"""Many nodes in one process over the memory transport; deterministic for a seed.

Every simulation also trains each node alone (local-only) and one model on all the data
(pooled), so its report answers "many models vs one model vs alone" on held-out data."""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from manymodels.aggregation import RuleError, check_inputs, get_rule
from manymodels.protocol import Identity

from .exchange import make_exchange
from .learning.datasets import Dataset, DatasetError, load_dataset
from .learning.models import MODELS, build_model
from .learning.partition import PartitionError, parse_partition, partition
from .learning.torch_learner import TorchLearner
from .node import Node
from .topology import TopologyError, neighbours
from .transport.memory import LinkModel, MemoryNetwork

# Virtual time starts at a fixed instant so timestamps (and thus every byte) repeat for a seed.
EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ROUND_MS = 1_000


class ConfigError(ValueError):
    """A simulation that cannot run as asked; the message is one line for the user."""


@dataclass(frozen=True)
class SimulationConfig:
    nodes: int = 8
    rounds: int = 20
    dataset: str = "digits"
    partition: str = "dirichlet:0.5"
    model: str = "mlp"
    exchange: str = "weights"
    rule: str = "fedavg"
    topology: str = "full"
    local_epochs: int = 1
    seed: int = 0
    lr: float = 1e-2
    batch_size: int = 32
    loss: float = 0.0  # probability that a message is lost


def node_identity(seed: int, index: int) -> Identity:
    return Identity(hashlib.sha256(f"manymodels/simulation/{seed}/{index}".encode()).digest())


def _check(config: SimulationConfig) -> None:
    if config.nodes < 1 or config.rounds < 1 or config.local_epochs < 1:
        raise ConfigError("--nodes, --rounds and --local-epochs must be at least 1")
    if config.model not in MODELS:
        raise ConfigError(f"unknown model {config.model!r}; available: {', '.join(MODELS)}")
    try:
        parse_partition(config.partition)
        get_rule(config.rule)
        make_exchange(config.exchange)
        neighbours(config.topology, config.nodes, config.seed)
    except (PartitionError, RuleError, TopologyError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _learner(config: SimulationConfig, data: Dataset, index: np.ndarray, seed: int) -> TorchLearner:
    # Nodes of one architecture start from one shared initialisation (seeded by the run's seed),
    # as decentralised SGD assumes; averaging independently initialised networks fails.
    module = build_model(config.model, data.input_shape, data.num_classes, seed=config.seed)
    return TorchLearner(module, data.x_train[index], data.y_train[index], architecture=config.model,
                        lr=config.lr, batch_size=config.batch_size, seed=seed)


def _accuracy(learner: TorchLearner, data: Dataset) -> float:
    return round(learner.evaluate(data.x_test, data.y_test)["accuracy"], 6)


Adversary = Callable[[int, MemoryNetwork, list[Node]], None]


def run_simulation(config: SimulationConfig, on_round: Callable[[int, float], None] | None = None,
                   adversary: Adversary | None = None) -> dict:
    """`adversary(round, network, nodes)` runs after the honest nodes publish and before delivery:
    it may attach its own endpoints to the network and send whatever bytes it likes."""
    _check(config)
    started = time.perf_counter()
    torch.set_num_threads(1)  # tiny models: one thread is faster here and keeps runs repeatable
    try:
        data = load_dataset(config.dataset, seed=config.seed)
        parts = partition(data.y_train, config.nodes, config.partition, seed=config.seed)
    except (DatasetError, PartitionError) as exc:
        raise ConfigError(str(exc)) from None

    rule = get_rule(config.rule)
    adjacency = neighbours(config.topology, config.nodes, config.seed)
    for i, nb in enumerate(adjacency):
        problem = check_inputs(rule, len(nb) + 1)
        if problem:
            raise ConfigError(f"rule {config.rule} cannot work for node {i} with {len(nb)} neighbours: {problem}")

    network = MemoryNetwork(seed=config.seed, link=LinkModel(loss=config.loss))
    clock = lambda: EPOCH_MS + int(network.now_ms)  # noqa: E731
    nodes: list[Node] = []
    for i, index in enumerate(parts):
        identity = node_identity(config.seed, i)
        learner = _learner(config, data, index, seed=config.seed * 1_000_003 + i)
        nodes.append(Node(identity, learner, network.attach(identity.peer_id), rule,
                          make_exchange(config.exchange), clock=clock))
    for node, nb in zip(nodes, adjacency):
        node.neighbours = [nodes[j].id for j in nb]

    history: list[list[float]] = [[] for _ in nodes]
    sent_per_round: list[list[dict[str, int]]] = [[] for _ in nodes]
    for r in range(config.rounds):
        before = [Counter(node.stats.sent_by_kind) for node in nodes]
        for node in nodes:
            node.learner.fit(config.local_epochs)
            node.publish()
        if adversary:
            adversary(r, network, nodes)
        network.run_until((r + 1) * ROUND_MS)
        for i, node in enumerate(nodes):
            node.fold()
            history[i].append(_accuracy(node.learner, data))
            sent_per_round[i].append(dict(node.stats.sent_by_kind - before[i]))
        if on_round:
            on_round(r + 1, float(np.mean([h[-1] for h in history])))

    epochs = config.rounds * config.local_epochs
    local_only = []
    for i, index in enumerate(parts):
        alone = _learner(config, data, index, seed=config.seed * 1_000_003 + i)
        alone.fit(epochs)
        local_only.append(_accuracy(alone, data))
    pooled = _learner(config, data, np.arange(len(data.y_train)), seed=config.seed)
    pooled.fit(epochs)

    per_node = []
    for i, node in enumerate(nodes):
        per_node.append({
            "id": node.id,
            "model": node.learner.architecture,
            "num_examples": node.learner.num_examples,
            "neighbours": len(node.neighbours),
            "final_accuracy": history[i][-1],
            "local_only_accuracy": local_only[i],
            "bytes_sent": node.stats.bytes_sent,
            "bytes_received": node.stats.bytes_received,
            "bytes_sent_by_kind": dict(node.stats.sent_by_kind),
            "bytes_sent_per_round": sent_per_round[i],
            "messages_accepted": node.stats.messages_accepted,
            "rejected_messages": node.stats.rejected_total,
            "rejected_by_reason": dict(sorted(node.stats.rejected.items())),
            "ignored_messages": dict(sorted(node.stats.ignored.items())),
            "history": history[i],
        })
    finals = [n["final_accuracy"] for n in per_node]
    return {
        "config": asdict(config),
        "summary": {
            "mean_accuracy": round(float(np.mean(finals)), 6),
            "min_accuracy": round(float(np.min(finals)), 6),
            "mean_local_only_accuracy": round(float(np.mean(local_only)), 6),
            "pooled_accuracy": _accuracy(pooled, data),
            "rejected_messages": sum(n["rejected_messages"] for n in per_node),
            "bytes_sent": sum(n["bytes_sent"] for n in per_node),
            "messages_dropped": network.dropped,
            "test_examples": int(len(data.y_test)),
            "wall_seconds": round(time.perf_counter() - started, 3),
        },
        "nodes": per_node,
    }
