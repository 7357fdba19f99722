"""Many nodes in one process over the memory transport; deterministic for a seed.

Every simulation also trains each node alone (local-only) and one model per architecture on all
the private data (pooled), so its report answers "many models vs one model vs alone" on held-out
data."""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from manymodels.aggregation import RuleError, check_inputs, get_rule
from manymodels.protocol import Identity, peer_id

from .attacks import ATTACKS, AttackContext, Attacker, AttackSpecError, parse_attack
from ..core.exchange import (EXCHANGES, Distillation, DistillSettings, Exchange, Mixed, SyntheticSamples,
                       SyntheticSettings, WeightGossip)
from ..learning.datasets import Dataset, DatasetError, load_dataset
from ..learning.generator import GaussianClassGenerator
from ..learning.learner import Learner
from ..learning.models import ARCHITECTURES, MIXED
from ..learning.partition import PartitionError, parse_partition, partition
from ..learning.probe import DEFAULT_SIZE, ProbeError, ProbeSet, load_probe, split_probe
from ..learning.recipe import make_learner
from ..core.node import Node, sealed
from ..core.reputation import Reputation
from .topology import TopologyError, neighbours
from .network import LinkModel, MemoryNetwork

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
    model: str = "mlp"  # an architecture, "mixed", or a comma-separated list assigned in turn
    exchange: str = "weights"
    rule: str = "fedavg"  # weights rule (weights and mixed exchanges)
    logit_rule: str = "logit-probmean"  # logits rule (distill and mixed exchanges)
    topology: str = "full"
    local_epochs: int = 1
    seed: int = 0
    lr: float = 1e-2
    batch_size: int = 32
    loss: float = 0.0  # probability that a message is lost
    probe_size: int = DEFAULT_SIZE  # inputs set aside from the training data as the public probe set
    probe_file: str | None = None  # a user's own probe set (.npy) instead
    temperature: float = 2.0
    distill_epochs: int = 2
    synthetic_per_class: int = 20
    synthetic_weight: float = 0.5
    licence: str = "CC-BY-4.0"  # on this network's synthetic data cards
    accept_licences: tuple[str, ...] = ("CC0-1.0", "CC-BY-4.0")
    max_train: int | None = None  # subsample the training set (e.g. Fashion-MNIST) for speed
    max_test: int | None = None  # and the held-out test set
    attacks: tuple[str, ...] = ()  # NAME:FRACTION each; attackers are chosen by seed
    reputation: float = 0.0  # ban a peer whose reputation falls below this (0: never)
    # A Flower client as every node's learner (MODULE:ATTR or FILE.py:ATTR[:MODEL], docs/FLOWER.md): node i
    # gets partition-id i of num-partitions = nodes and loads its own data; dataset, partition, model,
    # lr and batch_size are then unused.
    client_app: str | None = None
    run_config: str = ""  # the client's context.run_config overrides, "k=v k2=v2" as `flwr run --run-config`


def node_identity(seed: int, index: int) -> Identity:
    return Identity(hashlib.sha256(f"manymodels/simulation/{seed}/{index}".encode()).digest())


def architectures(config: SimulationConfig) -> list[str]:
    """The architecture of each node."""
    names = MIXED if config.model == "mixed" else tuple(m.strip() for m in config.model.split(","))
    for name in names:
        if name not in ARCHITECTURES:
            raise ConfigError(f"unknown model {name!r}; available: {', '.join(ARCHITECTURES)}, mixed")
    return [names[i % len(names)] for i in range(config.nodes)]


def _check(config: SimulationConfig) -> None:
    if config.nodes < 1 or config.rounds < 1 or config.local_epochs < 1:
        raise ConfigError("--nodes, --rounds and --local-epochs must be at least 1")
    if config.exchange not in EXCHANGES:
        raise ConfigError(f"unknown exchange {config.exchange!r}; available: {', '.join(EXCHANGES)}")
    if config.client_app:
        if config.exchange == "synthetic":
            raise ConfigError("a Flower client keeps its data to itself: --exchange synthetic needs the built-in "
                              "datasets; use weights, distill or mixed with --client-app")
        if any(spec.split(":")[0].strip() == "labelflip" for spec in config.attacks):
            raise ConfigError("labelflip poisons the simulator's dataset; a Flower client loads its own data")
    else:
        if config.run_config:
            raise ConfigError("--run-config is the run config of a Flower client; give --client-app too")
        architectures(config)
    try:
        if not config.client_app:
            parse_partition(config.partition)
        for spec, kind in ((config.rule, "weights"), (config.logit_rule, "logits")):
            if get_rule(spec).kind != kind:
                raise ConfigError(f"{spec} is a {get_rule(spec).kind} rule; this option takes a {kind} rule")
        if get_rule(config.rule).client_config and not config.client_app:
            raise ConfigError(f"{config.rule}: the proximal term runs in a Flower client's fit (it gets proximal_mu "
                              "in its fit config); it needs --client-app")
        neighbours(config.topology, config.nodes, config.seed)
        _attackers(config)
    except (PartitionError, RuleError, TopologyError, AttackSpecError) as exc:
        raise ConfigError(str(exc)) from None


def _attackers(config: SimulationConfig) -> dict[int, str]:
    """Node index -> attack name, chosen by seed; round(fraction * nodes) nodes per attack."""
    order = np.random.default_rng([config.seed, 0xA77AC]).permutation(config.nodes)
    chosen, start = {}, 0
    for spec in config.attacks:
        name, fraction = parse_attack(spec)
        count = max(1, round(fraction * config.nodes))
        chosen.update({int(i): name for i in order[start:start + count]})
        start += count
    if start >= config.nodes:
        raise AttackSpecError(f"attacks {', '.join(config.attacks)} leave no honest node among {config.nodes}")
    return chosen


def _learner(arch: str, config: SimulationConfig, data: Dataset, index: np.ndarray, seed: int,
             labels: Callable[[np.ndarray], np.ndarray] = lambda y: y) -> Learner:
    try:
        return make_learner(arch, data.x_train[index], labels(data.y_train[index]), data, init_seed=config.seed,
                            seed=seed, lr=config.lr, batch_size=config.batch_size)
    except ValueError as exc:  # e.g. a CNN on a dataset that is not images
        raise ConfigError(str(exc)) from None


def _accuracy(learner: Learner, data: Dataset) -> float:
    return round(learner.evaluate(data.x_test, data.y_test)["accuracy"], 6)


def _exchange(config: SimulationConfig, data: Dataset, probe: ProbeSet, index: np.ndarray, seed: int,
              labels: Callable[[np.ndarray], np.ndarray]) -> Exchange:
    """The node's exchange; `labels` poisons a data-poisoning attacker's labels, whose class counts
    and generator then describe the poisoned data, as its model does."""
    rule = get_rule(config.rule)
    y = labels(data.y_train[index])
    counts = np.bincount(y, minlength=data.num_classes).tolist()
    distill = lambda: Distillation(DistillSettings(  # noqa: E731
        probe, get_rule(config.logit_rule), counts, config.temperature, config.distill_epochs))
    if config.exchange == "weights":
        return WeightGossip(rule)
    if config.exchange == "distill":
        return distill()
    if config.exchange == "mixed":
        return Mixed(WeightGossip(rule), distill())
    value_range = (float(data.x_train.min()), float(data.x_train.max()))
    generator = GaussianClassGenerator(data.x_train[index], y, value_range)
    return SyntheticSamples(SyntheticSettings(
        generator, np.random.default_rng(seed), data.input_shape, value_range, config.synthetic_per_class,
        config.synthetic_weight, config.licence, tuple(config.accept_licences)))


def _check_rules(config: SimulationConfig, archs: list[str], adjacency: list[list[int]]) -> None:
    """Say at start when a rule cannot work with a node's neighbour count."""
    for i, nb in enumerate(adjacency):
        checks = []
        if config.exchange in ("weights", "mixed") and archs[i] != "forest":
            checks.append((config.rule, 1 + sum(archs[j] == archs[i] for j in nb), "same-architecture "))
        if config.exchange in ("distill", "mixed"):
            checks.append((config.logit_rule, 1 + len(nb), ""))
        for spec, n, what in checks:
            problem = check_inputs(spec, n)
            if problem:
                raise ConfigError(f"node {i} ({archs[i]}) has {n - 1} {what}neighbours: {problem}")


Adversary = Callable[[int, MemoryNetwork, list[Node]], None]


def run_simulation(config: SimulationConfig, on_round: Callable[[int, float], None] | None = None,
                   adversary: Adversary | None = None) -> dict:
    """`adversary(round, network, nodes)` runs after the honest nodes publish and before delivery:
    it may attach its own endpoints to the network and send whatever bytes it likes."""
    _check(config)
    if not config.client_app:
        return _simulate(config, on_round, adversary)
    from ..learning.flower import FlowerError

    try:
        return _simulate(config, on_round, adversary)
    except FlowerError as exc:  # the client app cannot load or run: one line for the user
        raise ConfigError(str(exc)) from exc


def _simulate(config: SimulationConfig, on_round: Callable[[int, float], None] | None,
              adversary: Adversary | None) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(1)  # tiny models: one thread is faster here and keeps runs repeatable
    flower = _FlowerWorld(config) if config.client_app else None
    if flower:
        archs, data, probe, parts = flower.archs, None, flower.probe, list(range(config.nodes))
    else:
        archs = architectures(config)
        try:
            data = load_dataset(config.dataset, seed=config.seed, max_train=config.max_train,
                            max_test=config.max_test)
            probe, data = split_probe(data, config.probe_size)
            if config.probe_file:
                probe = load_probe(config.probe_file, data.input_shape)
            parts = partition(data.y_train, config.nodes, config.partition, seed=config.seed)
        except (DatasetError, PartitionError, ProbeError) as exc:
            raise ConfigError(str(exc)) from None
    adjacency = neighbours(config.topology, config.nodes, config.seed)
    _check_rules(replace(config, exchange=flower.exchange) if flower else config, archs, adjacency)
    accuracy = flower.accuracy if flower else (lambda learner: _accuracy(learner, data))

    network = MemoryNetwork(seed=config.seed, link=LinkModel(loss=config.loss))
    clock = lambda: EPOCH_MS + int(network.now_ms)  # noqa: E731
    attackers = _attackers(config)
    context = AttackContext([], config.nodes, len(attackers), np.random.default_rng([config.seed, 0xBAD]))
    nodes: list[Node] = []
    for i, index in enumerate(parts):
        identity = node_identity(config.seed, i)
        seed = config.seed * 1_000_003 + i
        attack = ATTACKS[attackers[i]]() if i in attackers else None
        if flower:
            learner, exchange = flower.learners[i], flower.exchange_for(i)
        else:
            labels = (lambda y, a=attack: a.poison_labels(y, data.num_classes)) if attack else (lambda y: y)
            learner = _learner(archs[i], config, data, index, seed, labels)
            exchange = _exchange(config, data, probe, index, seed, labels)
        attacker = Attacker(attack, context) if attack else None
        transport = network.attach(identity.peer_id)
        num_classes = flower.num_classes if flower else data.num_classes
        nodes.append(Node(identity, learner, attacker.tap(transport) if attacker else transport, exchange,
                          num_classes=num_classes, clock=clock, reputation=Reputation(config.reputation),
                          outbound=attacker or sealed))
    context.honest = [n for i, n in enumerate(nodes) if i not in attackers]
    for node, nb in zip(nodes, adjacency):
        node.neighbours = [nodes[j].id for j in nb]

    history: list[list[float]] = [[] for _ in nodes]
    sent_per_round: list[list[dict[str, int]]] = [[] for _ in nodes]
    for r in range(config.rounds):
        context.round = r
        before = [Counter(node.stats.sent_by_kind) for node in nodes]
        for node in nodes:
            node.train(config.local_epochs)
        # attackers publish last, so the colluding ones (ALIE, IPM, Sybil) read this round's honest models
        for i in sorted(range(len(nodes)), key=lambda i: i in attackers):
            nodes[i].publish()
        if adversary:
            adversary(r, network, nodes)
        network.run_until((r + 1) * ROUND_MS)
        for i, node in enumerate(nodes):
            if i not in attackers:  # an attacker's own model does not matter
                node.fold()
            history[i].append(accuracy(node.learner))
            sent_per_round[i].append(dict(node.stats.sent_by_kind - before[i]))
        if on_round:
            on_round(r + 1, float(np.mean([history[i][-1] for i in range(len(nodes)) if i not in attackers])))

    epochs = config.rounds * config.local_epochs
    local_only = []
    for i, index in enumerate(parts):
        alone = flower.alone(i) if flower else _learner(archs[i], config, data, index, seed=config.seed * 1_000_003 + i)
        alone.fit(epochs)
        local_only.append(accuracy(alone))
    pooled = {}
    for arch in sorted(set(archs)):
        one = flower.pooled() if flower else _learner(arch, config, data, np.arange(len(data.y_train)),
                                                      seed=config.seed)
        one.fit(epochs)
        pooled[arch] = accuracy(one)

    per_node = [{
        "id": node.id,
        "model": archs[i],
        "attack": attackers.get(i),
        "num_examples": node.learner.num_examples,
        "neighbours": len(node.neighbours),
        "final_accuracy": history[i][-1],
        "local_only_accuracy": local_only[i],
        "pooled_accuracy": pooled[archs[i]],
        "bytes_sent": node.stats.bytes_sent,
        "bytes_received": node.stats.bytes_received,
        "bytes_sent_by_kind": dict(node.stats.sent_by_kind),
        "bytes_sent_per_round": sent_per_round[i],
        "messages_accepted": node.stats.messages_accepted,
        "rejected_messages": node.stats.rejected_total,
        "rejected_by_reason": dict(sorted(node.stats.rejected.items())),
        "refused_by_reason": dict(sorted(node.stats.refused.items())),
        "reputation": {peer_id(p): round(v, 4) for p, v in sorted(node.reputation.scores.items())},
        "banned": sorted(peer_id(p) for p in node.banned),
        "history": history[i],
    } for i, node in enumerate(nodes)]
    honest = [n for n in per_node if n["attack"] is None]
    report = {
        "config": asdict(config),
        "probe": {"name": probe.name, "digest": probe.digest.hex(), "size": len(probe.x)} if probe else None,
        "attackers": [{"id": n["id"], "attack": n["attack"]} for n in per_node if n["attack"]],
        "summary": {  # accuracies over honest nodes only
            **_accuracies(honest),
            "architectures": {arch: {"nodes": sum(n["model"] == arch for n in honest),
                                     **_accuracies([n for n in honest if n["model"] == arch])}
                              for arch in sorted({n["model"] for n in honest})},
            "rejected_messages": sum(n["rejected_messages"] for n in per_node),
            "bytes_sent": sum(n["bytes_sent"] for n in per_node),
            "messages_dropped": network.dropped,
            "test_examples": flower.test_examples if flower else int(len(data.y_test)),
            "wall_seconds": round(time.perf_counter() - started, 3),
        },
        "nodes": per_node,
    }
    if flower and flower.warnings:
        report["warnings"] = flower.warnings
    return report


def _accuracies(nodes: list[dict]) -> dict[str, float]:
    def mean(key):
        return round(float(np.mean([n[key] for n in nodes])), 6)
    return {"mean_accuracy": mean("final_accuracy"),
            "min_accuracy": round(float(np.min([n["final_accuracy"] for n in nodes])), 6),
            "mean_local_only_accuracy": mean("local_only_accuracy"),
            "pooled_accuracy": mean("pooled_accuracy")}


class _FlowerWorld:
    """--client-app: every node's learner is the Flower client with partition-id = its index and
    num-partitions = nodes; accuracy is the metric the client's evaluate returns (on its own test
    data). Local-only trains the same client alone; pooled runs it with num-partitions=1,
    partition-id=0 (all the data). Every learner starts from node 0's first arrays, as a Flower
    server hands every client the same initial model."""

    def __init__(self, config: SimulationConfig) -> None:
        from ..learning.flower import FlowerLearner, load_client_app

        self.config = config
        self.source = load_client_app(config.client_app)
        self.run_config = self.source.run_config(config.run_config)
        self.fit_config = get_rule(config.rule).client_config

        def learner(i: int, n: int, seed: int) -> FlowerLearner:
            return FlowerLearner(self.source, partition_id=i, num_partitions=n, run_config=self.run_config,
                                 fit_config=self.fit_config, seed=seed, init_seed=config.seed, run_id=config.seed + 1)
        self._learner = learner
        self.learners = [learner(i, config.nodes, config.seed * 1_000_003 + i) for i in range(config.nodes)]
        self.initial = self.learners[0].get_weights()
        for one in self.learners[1:]:
            one.set_weights(self.initial)
        self.archs = [one.architecture for one in self.learners]
        self.warnings: list[str] = []
        self.test_examples = 0
        self.exchange, self.probe, self.num_classes = config.exchange, None, 0
        first = self.learners[0]
        if config.exchange in ("distill", "mixed"):
            if not (first.supports_predict and first.supports_distill):
                self._warn(f"{config.client_app} has no predict/distill hooks (see docs/FLOWER.md): "
                           f"--exchange {config.exchange} falls back to weight exchange")
                self.exchange = "weights"
            elif not config.probe_file:
                raise ConfigError("distillation with a Flower client needs --probe FILE.npy: public inputs shaped as "
                                  "the client's predict hook takes them")
            else:
                try:
                    shape = np.load(config.probe_file, mmap_mode="r", allow_pickle=False).shape[1:]
                    self.probe = load_probe(config.probe_file, tuple(shape))
                except (OSError, ValueError, ProbeError) as exc:
                    raise ConfigError(f"cannot read probe set {config.probe_file}: {exc}") from None
                self.num_classes = int(first.predict(self.probe.x[:1]).shape[1])

    def _warn(self, text: str) -> None:
        logging.getLogger("manymodels").warning("warning: %s", text)
        self.warnings.append(text)

    def exchange_for(self, i: int) -> Exchange:
        rule = get_rule(self.config.rule)  # one Rule per node: Flower's server optimizers keep state in it
        if self.exchange == "weights":
            return WeightGossip(rule)
        c = self.config
        # A Flower client does not say how many examples of each class it holds: weigh every model alike.
        distill = Distillation(DistillSettings(self.probe, get_rule(c.logit_rule), [1] * self.num_classes,
                                               c.temperature, c.distill_epochs))
        return distill if self.exchange == "distill" else Mixed(WeightGossip(rule), distill)

    def accuracy(self, learner: Learner) -> float:
        metrics = learner.evaluate()
        self.test_examples = int(metrics.get("num-examples", self.test_examples))
        return round(metrics["accuracy"], 6)

    def alone(self, i: int) -> Learner:
        one = self._learner(i, self.config.nodes, self.config.seed * 1_000_003 + i)
        one.set_weights(self.initial)
        return one

    def pooled(self) -> Learner:
        one = self._learner(0, 1, self.config.seed)
        one.set_weights(self.initial)
        return one
