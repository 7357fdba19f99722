"""Many nodes in one process over the memory transport; deterministic for a seed. The nodes go in
lock-step rounds, or with --schedule async each on its own clock (node/sim/asynchronous.py).

The options are checked once (node/sim/spec.py); a world, the built-in datasets or a Flower client
app, gives each node its learner and what its exchange is built from, and every node is built by
node/spec.py's build_node, as in the daemon. Every simulation also trains each node alone
(local-only) and one model per architecture on all the private data (pooled), so its report answers
"many models vs one model vs alone" on held-out data. A study runs smaller networks of the same nodes
(`run_members`: no baselines, no report), may replay folds (`before_fold`, node/sim/foldlog.py), or
read the trained models themselves (`run_models`, `baseline_models`). This is the local engine; node/sim/ray_backend.py runs the same steps
(build_member, record, node_report...) in shards on Ray, and node/sim/backends.py picks one.
Nodes of one architecture train and are evaluated in batches (node/sim/batching.py), with the same
numbers as one by one; `protocol_only` runs signed messages without training (node/sim/protocol_only.py)."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial

import numpy as np
import torch

from manymodels.aggregation import check_inputs
from manymodels.protocol import Identity, ReadingMemo, peer_id

from .asynchronous import gossip, history_ms
from .attacks import ATTACKS, Attack, AttackContext, Attacker, folds
from .batching import Threads, fold_nodes, publish_nodes, threads, train_nodes
from .foldlog import LoggedNode
from ..core.node import Node, sealed
from ..core.transport import Transport
from ..learning.batched import evaluation, fit_all
from ..learning.datasets import DatasetError, load_dataset, with_label_noise
from ..learning.generator import fit_generator
from ..learning.learner import Learner
from ..learning.partition import PartitionError, partition
from ..learning.probe import ProbeError, load_probe, split_probe
from ..learning.recipe import make_learner, node_seed
from ..spec import NodeData, NodeSpec, SpecError, build_node
from .network import LinkModel, MemoryNetwork
from .series import Series, counts, new_series, record
from .protocol_only import ProtocolWorld, RoundClock, protocol_report
from .spec import SimulationConfig, SimulationSpec

# Virtual time starts at a fixed instant so timestamps (and thus every byte) repeat for a seed.
EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ROUND_MS = 1_000

Adversary = Callable[[int, MemoryNetwork, list[Node]], None]
BeforeFold = Callable[[int, int, LoggedNode], None]  # (round, node index, node) before each honest node folds


def node_identity(seed: int, index: int) -> Identity:
    return Identity(hashlib.sha256(f"manymodels/simulation/{seed}/{index}".encode()).digest())


def run_simulation(config: SimulationConfig, on_round: Callable[[int, float], None] | None = None,
                   adversary: Adversary | None = None) -> dict:
    """The local engine (backends.py's simulate picks the config's backend). `adversary(round,
    network, nodes)` runs after the honest nodes publish and before delivery: it may attach its own
    endpoints to the network and send whatever bytes it likes."""
    spec = SimulationSpec.parse(config)
    if config.backend != "local":
        raise ValueError(f"run_simulation is the local engine; --backend {config.backend} runs through "
                         "node/sim/backends.py's simulate")
    if adversary and config.schedule == "async":
        raise SpecError("an adversary acts between rounds; the async schedule has none")
    if config.protocol_only:
        return _protocol_only(spec, on_round, adversary)
    if not config.client_app:
        return _simulate(spec, on_round, adversary)
    from ..learning.flower import FlowerError

    try:
        return _simulate(spec, on_round, adversary)
    except FlowerError as exc:  # the client app cannot load or run: one line for the user
        raise SpecError(str(exc)) from exc


def _simulate(spec: SimulationSpec, on_round: Callable[[int, float], None] | None,
              adversary: Adversary | None) -> dict:
    started = time.perf_counter()
    world = make_world(spec)
    network, nodes, series = _run(spec, world, list(range(spec.config.nodes)), on_round, adversary)
    report = _report(spec, world, nodes, series, _baselines(spec, world))
    return finish_report(report, spec, world, network, started)


def finish_report(report: dict, spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld, network: MemoryNetwork,
                  started: float) -> dict:
    """The network's and the run's own numbers, and the world's warnings, added to a report."""
    report["summary"].update(messages_dropped=network.dropped, test_examples=world.test_examples,
                             wall_seconds=round(time.perf_counter() - started, 3))
    if (times := history_ms(spec)) is not None:
        report["history_ms"] = times
    if world.warnings:
        report["warnings"] = world.warnings
    return report


def _protocol_only(spec: SimulationSpec, on_round: Callable[[int, float], None] | None,
                   adversary: Adversary | None) -> dict:
    """Signed messages and no training (node/sim/protocol_only.py); a report without accuracies."""
    started = time.perf_counter()
    clock = RoundClock(on_round)
    world = ProtocolWorld(spec, clock)
    network, nodes, series = _run(spec, world, list(range(spec.config.nodes)), clock.tick, adversary)
    report = protocol_report(_report(spec, world, nodes, series, world.baselines()), network, clock,
                             nodes[0].memo.distinct if nodes else 0)
    report["summary"]["wall_seconds"] = round(time.perf_counter() - started, 3)
    return report


def make_world(spec: SimulationSpec) -> _DatasetWorld | _FlowerWorld:
    """Where the nodes' learners and data come from; a study builds it once for many runs."""
    torch.set_num_threads(1)  # tiny models: one thread is faster here and keeps runs repeatable
    return _FlowerWorld(spec) if spec.config.client_app else _DatasetWorld(spec)


def run_members(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld, members: list[int],
                before_fold: BeforeFold | None = None) -> dict[int, float]:
    """The final held-out accuracy of each honest member's model when the network is only `members`
    (indices of the spec's N nodes, each with its own identity, data and attack, linked as the
    topology links them). No baselines, no report: what a study runs many times. `before_fold` is
    called before each honest node's fold, with the node (a LoggedNode) holding what it will fold."""
    *_, series = _run(spec, world, members, before_fold=before_fold)
    return {i: series[k]["history"][-1] for k, i in enumerate(members) if i not in spec.attackers}


def _run(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld, members: list[int],
         on_round: Callable[[int, float], None] | None = None, adversary: Adversary | None = None,
         before_fold: BeforeFold | None = None) -> tuple[MemoryNetwork, list[Node], Series]:
    """The network of `members`, run for every round (or as long in virtual time, async)."""
    node_spec = replace(spec.node, exchange=world.exchange)
    position = {i: k for k, i in enumerate(members)}
    adjacency = [[position[j] for j in spec.adjacency[i] if j in position] for i in members]
    check_rules(node_spec, [world.archs[i] for i in members], adjacency)
    network = MemoryNetwork(seed=spec.config.seed, link=LinkModel(loss=spec.config.loss))
    nodes, context = _build_nodes(spec, node_spec, world, network, members, adjacency,
                                  LoggedNode if before_fold else Node)
    with _frozen_heap():
        if spec.config.schedule == "async":
            series = gossip(spec, nodes, network, context, world.accuracy, members, on_round, before_fold)
        else:
            series = _rounds(spec, nodes, network, context, world, members, on_round, adversary, before_fold)
    return network, nodes, series


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """The network as built (nodes, learners, keys, data: millions of objects at 10,000 nodes) out of
    the garbage collector's sight while it runs, so that each full collection does not walk it all
    again (9 % of a round at 5,000 nodes); back in sight after, to be freed with the run."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def out_of_sight() -> None:
    """After a round: the round's garbage collected and what outlives it (the messages and readings
    kept, reputations, series) frozen with the network (_frozen_heap, or a Ray shard's whole life),
    so that the collector walks only the newest objects. Otherwise each full collection walks every
    round's leftovers again: 9 % of a round at 3,000 nodes. The collection first: a cycle frozen is
    freed only once unfrozen."""
    gc.collect()
    gc.freeze()


def check_rules(spec: NodeSpec, archs: list[str], adjacency: list[list[int]]) -> None:
    """Say at start when a rule cannot work with a node's neighbour count."""
    for i, nb in enumerate(adjacency):
        checks = []
        if spec.exchange in ("weights", "mixed") and archs[i] != "forest":
            checks.append((spec.rule, 1 + sum(archs[j] == archs[i] for j in nb), "same-architecture "))
        if spec.exchange in ("distill", "mixed"):
            checks.append((spec.logit_rule, 1 + len(nb), ""))
        for rule, n, what in checks:
            problem = check_inputs(rule, n)
            if problem:
                raise SpecError(f"node {i} ({archs[i]}) has {n - 1} {what}neighbours: {problem}")


def _build_nodes(spec: SimulationSpec, node_spec: NodeSpec, world: _DatasetWorld | _FlowerWorld,
                 network: MemoryNetwork, members: list[int], adjacency: list[list[int]],
                 node_class: type[Node]) -> tuple[list[Node], AttackContext]:
    """Every member, honest or attacker, on the memory network, with its neighbours (`adjacency`:
    by position in `members`)."""
    c = spec.config
    clock = lambda: EPOCH_MS + int(network.now_ms)  # noqa: E731
    context = AttackContext([], len(members), sum(i in spec.attackers for i in members),
                            np.random.default_rng([c.seed, 0xBAD]))
    nodes: list[Node] = []
    memo = ReadingMemo()
    for i in members:
        transport = network.attach(node_identity(c.seed, i).peer_id)
        nodes.append(build_member(spec, node_spec, world, i, transport, clock, context, node_class, memo))
    context.honest = [n for i, n in zip(members, nodes) if i not in spec.attackers]
    for node, nb in zip(nodes, adjacency):
        node.neighbours = [nodes[j].id for j in nb]
    return nodes, context


def build_member(spec: SimulationSpec, node_spec: NodeSpec, world: _DatasetWorld | _FlowerWorld, i: int,
                 transport: Transport, clock: Callable[[], int], context: AttackContext,
                 node_class: type[Node] = Node, memo: ReadingMemo | None = None) -> Node:
    """Node i of the spec, honest or attacker, on `transport`; its neighbours are the caller's to set.
    `memo`: shared by the nodes of one process, so that each distinct message is verified once."""
    attack = ATTACKS[spec.attackers[i]]() if i in spec.attackers else None
    learner, data = world.member(i, attack)
    attacker = Attacker(attack, context) if attack else None
    node = build_node(node_spec, node_identity(spec.config.seed, i), learner,
                      attacker.tap(transport) if attacker else transport, clock, data, node_class,
                      outbound=attacker or sealed)
    node.memo = memo
    return node


def _rounds(spec: SimulationSpec, nodes: list[Node], network: MemoryNetwork, context: AttackContext,
            world: _DatasetWorld | _FlowerWorld, members: list[int], on_round: Callable[[int, float], None] | None,
            adversary: Adversary | None, before_fold: BeforeFold | None) -> Series:
    """train -> publish -> deliver -> fold, every round; what each round did to each node (by position)."""
    attackers = {k for k, i in enumerate(members) if i in spec.attackers}
    series = new_series(len(nodes))
    memo = nodes[0].memo if nodes else None
    waiting: list[Callable[[], None]] = []  # rounds whose accuracies are still being computed
    with threads() as cores:
        for r in range(spec.config.rounds):
            context.round = r
            before = [counts(node) for node in nodes]
            train_nodes(nodes, spec.node.local_epochs, spec.config.batched)
            # attackers publish last, so the colluding ones (ALIE, IPM, Sybil) read this round's honest models
            publish_nodes(sorted(nodes, key=lambda node: node.outbound is not sealed), cores)
            if adversary:
                adversary(r, network, nodes)
            if memo is not None:  # each message's signature checked on every core before delivery
                memo.read_ahead(network.due((r + 1) * ROUND_MS), cores.each)
            network.run_until((r + 1) * ROUND_MS, by_receiver=True)
            folding = [k for k, i in enumerate(members) if folds(spec.attackers, i)]
            if before_fold:
                for k in folding:
                    before_fold(r, members[k], nodes[k])
                    nodes[k].fold()
            else:
                fold_nodes([nodes[k] for k in folding], spec.config.batched, cores)
            for i, node in enumerate(nodes):
                record(series[i], node, before[i])
            accuracies, running = _evaluation(world, [node.learner for node in nodes], cores)
            waiting.append(partial(_evaluated, series, r, accuracies, on_round, attackers))
            out_of_sight()
            while len(waiting) > running:  # a running evaluation may go on while the next round runs
                waiting.pop(0)()
        for one in waiting:
            one()
    return series


def _evaluation(world: _DatasetWorld | _FlowerWorld, learners: list[Learner], cores: Threads
                ) -> tuple[Callable[[], list[float]], bool]:
    """Each learner's held-out accuracy, as a call that gives it, and whether it is still being
    computed: a batched evaluation runs on a thread aside (the models read now) while the next
    round goes on, since torch lets go of the GIL in its products."""
    if isinstance(world, _DatasetWorld) and world.spec.config.batched:
        return cores.soon(world.evaluation(learners)), True
    done = world.accuracies(learners)
    return (lambda: done), False


def _evaluated(series: Series, r: int, accuracies: Callable[[], list[float]],
               on_round: Callable[[int, float], None] | None, attackers: set[int]) -> None:
    """Round r's accuracies into each node's history; on_round with the honest nodes' mean."""
    for one, accuracy in zip(series, accuracies()):
        one["history"].append(accuracy)
    if on_round:
        on_round(r + 1, float(np.mean([series[i]["history"][-1] for i in range(len(series)) if i not in attackers])))


def run_models(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld, members: list[int] | None = None
               ) -> dict[int, Learner]:
    """Each honest member's model after the last round, when the network is only `members` (all the
    spec's nodes by default; as in run_members): for a study that reads the models themselves (their
    predictions), not only their accuracy."""
    members = list(range(spec.config.nodes)) if members is None else members
    _, nodes, _ = _run(spec, world, members)
    return {i: node.learner for i, node in zip(members, nodes) if i not in spec.attackers}


def baseline_models(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld
                    ) -> tuple[list[Learner], dict[str, Learner]]:
    """Each node's model trained alone, and one model per architecture on all the private data
    (pooled), for as many epochs as the network trained."""
    return [one for block in _alone_blocks(spec, world) for one in block], _pooled_models(spec, world)


def _baselines(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld) -> tuple[list[float], dict[str, float]]:
    """The accuracies of baseline_models' models; the alone ones evaluated a block at a time, so
    that 10,000 of them are never held at once."""
    local_only = [a for block in _alone_blocks(spec, world) for a in world.accuracies(block)]
    return local_only, {arch: world.accuracy(one) for arch, one in _pooled_models(spec, world).items()}


def _pooled_models(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld) -> dict[str, Learner]:
    return {arch: _trained(spec, world.pooled(arch)) for arch in sorted(set(world.archs))}


def _alone_blocks(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld) -> Iterator[list[Learner]]:
    """Each node's model trained alone, in blocks of learners trained together (batched; a Flower
    client's learners one at a time, as before)."""
    block = 1024 if spec.config.batched and not spec.config.client_app else 1
    for start in range(0, spec.config.nodes, block):
        alone = [world.alone(i) for i in range(start, min(start + block, spec.config.nodes))]
        fit_all(alone, spec.config.rounds * spec.config.local_epochs)
        yield alone


def baseline(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld, learner: Learner) -> float:
    """A baseline's accuracy (a Ray shard trains its nodes' own)."""
    return world.accuracy(_trained(spec, learner))


def _trained(spec: SimulationSpec, learner: Learner) -> Learner:
    """A baseline trained for as many epochs as the network trained."""
    learner.fit(spec.config.rounds * spec.config.local_epochs)
    return learner


def _report(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld, nodes: list[Node], series: Series,
            baselines: tuple[list[float], dict[str, float]]) -> dict:
    """The report; the caller adds the network's and the run's own numbers to its summary."""
    local_only, pooled = baselines
    return assemble_report(spec, world, [node_report(spec, world, i, node, series[i], local_only[i], pooled)
                                         for i, node in enumerate(nodes)])


def node_report(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld, i: int, node: Node,
                series: dict[str, list], local_only: float, pooled: dict[str, float]) -> dict:
    """Node i's entry in the report."""
    archs = world.archs
    return {
        "id": node.id,
        "model": archs[i],
        "attack": spec.attackers.get(i),
        "num_examples": node.learner.num_examples,
        "neighbours": len(node.neighbours),
        "final_accuracy": series["history"][-1],
        "local_only_accuracy": local_only,
        "pooled_accuracy": pooled[archs[i]],
        "bytes_sent": node.stats.bytes_sent,
        "bytes_received": node.stats.bytes_received,
        "bytes_sent_by_kind": dict(node.stats.sent_by_kind),
        "bytes_sent_per_round": series["bytes_sent_per_round"],
        "messages_accepted": node.stats.messages_accepted,
        "rejected_messages": node.stats.rejected_total,
        "rejected_by_reason": dict(sorted(node.stats.rejected.items())),
        "refused_by_reason": dict(sorted(node.stats.refused.items())),
        "messages_withheld": node.stats.withheld,
        "reputation": {peer_id(p): round(v, 4) for p, v in sorted(node.reputation.scores.items())},
        "banned": sorted(peer_id(p) for p in node.banned),
        "rejected_per_round": series["rejected_per_round"],
        "banned_per_round": series["banned_per_round"],
        "history": series["history"],
        **_privacy(node, series["epsilon"], spec.config.dp_delta),
        **series.get("clock", {}),  # an async run's: the node's step duration, steps done, time away
    }


def assemble_report(spec: SimulationSpec, world: _DatasetWorld | _FlowerWorld, per_node: list[dict]) -> dict:
    """The report of every node's entry; the caller adds the network's and the run's own numbers."""
    honest = [n for n in per_node if n["attack"] is None]
    probe = world.probe
    return {
        "config": spec.config.to_report(),
        "probe": {"name": probe.name, "digest": probe.digest.hex(), "size": len(probe.x)} if probe else None,
        "attackers": [{"id": n["id"], "attack": n["attack"]} for n in per_node if n["attack"]],
        "summary": {  # accuracies over honest nodes only
            **_accuracies(honest),
            "architectures": {arch: {"nodes": sum(n["model"] == arch for n in honest),
                                     **_accuracies([n for n in honest if n["model"] == arch])}
                              for arch in sorted({n["model"] for n in honest})},
            "rejected_messages": sum(n["rejected_messages"] for n in per_node),
            "bytes_sent": sum(n["bytes_sent"] for n in per_node),
        },
        "nodes": per_node,
    }


def _privacy(node: Node, epsilon: list[float], delta: float) -> dict:
    """A DP node's privacy spent after each round (DP-SGD's, or its noisy moments' from the start), and
    the round after which its budget stopped its publishing (None: never); nothing without DP, so
    reports without it stay as they were."""
    if not epsilon:
        return {}
    budget = node.privacy_budget or None
    stopped = next((r + 1 for r, e in enumerate(epsilon) if budget and e > budget), None)
    return {"privacy": {"epsilon_per_round": epsilon, "delta": delta,
                        "noise_multiplier": node.privacy["noise_multiplier"], "budget": budget,
                        "stopped_publishing_round": stopped}}


def _accuracies(nodes: list[dict]) -> dict[str, float]:
    def mean(key):
        return round(float(np.mean([n[key] for n in nodes])), 6)
    return {"mean_accuracy": mean("final_accuracy"),
            "min_accuracy": round(float(np.min([n["final_accuracy"] for n in nodes])), 6),
            "mean_local_only_accuracy": mean("local_only_accuracy"),
            "pooled_accuracy": mean("pooled_accuracy")}


class _DatasetWorld:
    """The built-in datasets: node i trains its model on partition i of the training data, less the
    probe set; accuracy is measured on the held-out test set."""

    def __init__(self, spec: SimulationSpec) -> None:
        c = spec.config
        self.spec, self.archs, self.exchange, self.warnings = spec, spec.archs, c.exchange, []
        self.data_seed = c.seed if c.data_seed is None else c.data_seed
        try:
            self.probe, data = split_probe(
                load_dataset(c.dataset, seed=self.data_seed, max_train=c.max_train, max_test=c.max_test), c.probe_size)
            self.data = with_label_noise(data, c.label_noise, self.data_seed)
            if c.probe_file:
                self.probe = load_probe(c.probe_file, self.data.input_shape)
            self.parts = spec.plants.partitions(
                partition(self.data.y_train, c.nodes, c.partition, seed=self.data_seed), self.data_seed)
        except (DatasetError, PartitionError, ProbeError) as exc:
            raise SpecError(str(exc)) from None
        self.num_classes, self.test_examples = self.data.num_classes, int(len(self.data.y_test))
        self.value_range = (float(self.data.x_train.min()), float(self.data.x_train.max()))

    def _learner(self, arch: str, index: np.ndarray, seed: int, y: np.ndarray | None = None) -> Learner:
        data = self.data
        try:
            return make_learner(arch, data.x_train[index], data.y_train[index] if y is None else y, data,
                                init_seed=self.spec.config.seed, seed=seed, training=self.spec.node.learner.training)
        except ValueError as exc:  # e.g. a CNN on a dataset that is not images
            raise SpecError(str(exc)) from None

    def member(self, i: int, attack: Attack | None) -> tuple[Learner, NodeData]:
        """Node i's learner and data; a data-poisoning attacker's class counts and generator describe
        its poisoned labels, as its model does."""
        index, seed, x = self.parts[i], node_seed(self.spec.config.seed, i), self.data.x_train
        y = self._labels(i)
        if attack:
            y = attack.poison_labels(y, self.num_classes)
        return self._learner(self.archs[i], index, seed, y), NodeData(
            self.num_classes, np.bincount(y, minlength=self.num_classes).tolist(), lambda: self.probe,
            lambda: fit_generator(x[index], y, self.value_range, self.num_classes, self.spec.node.moments),
            self.data.input_shape, self.value_range,
            np.random.default_rng(seed))

    def _labels(self, i: int) -> np.ndarray:
        return self.spec.plants.labels(i, self.data.y_train[self.parts[i]], self.data_seed)

    def accuracy(self, learner: Learner) -> float:
        return round(learner.evaluate(self.data.x_test, self.data.y_test)["accuracy"], 6)

    def accuracies(self, learners: list[Learner]) -> list[float]:
        """accuracy() of each; with batched training, evaluated in batches too (equal)."""
        if not self.spec.config.batched:
            return [self.accuracy(learner) for learner in learners]
        return self.evaluation(learners)()

    def evaluation(self, learners: list[Learner]) -> Callable[[], list[float]]:
        """The batched accuracies() of the learners as they are now, computed when called (on any thread)."""
        finish = evaluation(learners, self.data.x_test, self.data.y_test)
        return lambda: [round(a, 6) for a in finish()]

    def alone(self, i: int) -> Learner:
        return self._learner(self.archs[i], self.parts[i], node_seed(self.spec.config.seed, i), self._labels(i))

    def pooled(self, arch: str) -> Learner:
        return self._learner(arch, np.arange(len(self.data.y_train)), self.spec.config.seed)


class _FlowerWorld:
    """--client-app: every node's learner is the Flower client with partition-id = its index and
    num-partitions = nodes; accuracy is the metric the client's evaluate returns (on its own test
    data). Local-only trains the same client alone; pooled runs it with num-partitions=1,
    partition-id=0 (all the data). Every learner starts from node 0's first arrays, as a Flower
    server hands every client the same initial model."""

    def __init__(self, spec: SimulationSpec) -> None:
        from ..learning.flower import FlowerLearner, load_client_app

        config = self.config = spec.config
        self.source = load_client_app(config.client_app)
        self.run_config = self.source.run_config(config.run_config)
        self.fit_config = spec.node.rule.client_config

        def learner(i: int, n: int, seed: int) -> FlowerLearner:
            return FlowerLearner(self.source, partition_id=i, num_partitions=n, run_config=self.run_config,
                                 fit_config=self.fit_config, seed=seed, init_seed=config.seed, run_id=config.seed + 1)
        self._learner = learner
        self.learners = [learner(i, config.nodes, node_seed(config.seed, i)) for i in range(config.nodes)]
        self.initial = self.learners[0].get_weights()
        for one in self.learners[1:]:
            one.set_weights(self.initial)
        self.archs = [one.architecture for one in self.learners]
        self.warnings: list[str] = []
        self.test_examples = 0
        self.exchange, self.probe, self.num_classes = config.exchange, None, 0
        if config.exchange in ("distill", "mixed"):
            self._distill_setup(self.learners[0])

    def _distill_setup(self, first: Learner) -> None:
        """The probe set for distillation, or weight exchange where the client cannot distill."""
        config = self.config
        if not (first.supports_predict and first.supports_distill):
            self._warn(f"{config.client_app} has no predict/distill hooks (see docs/FLOWER.md): "
                       f"--exchange {config.exchange} falls back to weight exchange")
            self.exchange = "weights"
        elif not config.probe_file:
            raise SpecError("distillation with a Flower client needs --probe FILE.npy: public inputs shaped as "
                              "the client's predict hook takes them")
        else:
            try:
                shape = np.load(config.probe_file, mmap_mode="r", allow_pickle=False).shape[1:]
                self.probe = load_probe(config.probe_file, tuple(shape))
            except (OSError, ValueError, ProbeError) as exc:
                raise SpecError(f"cannot read probe set {config.probe_file}: {exc}") from None
            self.num_classes = int(first.predict(self.probe.x[:1]).shape[1])

    def _warn(self, text: str) -> None:
        logging.getLogger("manymodels").warning("warning: %s", text)
        self.warnings.append(text)

    def member(self, i: int, attack: Attack | None) -> tuple[Learner, NodeData]:
        """A Flower client does not say how many examples of each class it holds: every model is
        weighed alike in distillation; it has no generator (synthetic samples are refused)."""
        return self.learners[i], NodeData(self.num_classes, [1] * self.num_classes, lambda: self.probe,
                                          lambda: None, (), (0.0, 0.0), np.random.default_rng(i))

    def accuracy(self, learner: Learner) -> float:
        metrics = learner.evaluate()
        self.test_examples = int(metrics.get("num-examples", self.test_examples))
        return round(metrics["accuracy"], 6)

    def accuracies(self, learners: list[Learner]) -> list[float]:
        return [self.accuracy(learner) for learner in learners]

    def alone(self, i: int) -> Learner:
        one = self._learner(i, self.config.nodes, node_seed(self.config.seed, i))
        one.set_weights(self.initial)
        return one

    def pooled(self, arch: str) -> Learner:
        one = self._learner(0, 1, self.config.seed)
        one.set_weights(self.initial)
        return one
