"""The simulator on a Ray cluster (`simulate --backend ray`): the nodes in shards, one Ray actor per
shard, about one per CPU of the cluster. This process, the driver, owns the one MemoryNetwork and its
seeded generator and routes every message between the shards in the order the local engine sends
and delivers it, on the same virtual time, so a seed gives the local engine's report (all but its
wall time).

A round: every shard trains its nodes and publishes its honest ones into an outbox; the first
shard, which holds every attacker (they draw from the attack context's one generator, in turn), then
publishes theirs, reading the honest models the driver gathered from the other shards where an
omniscient attack needs them; the driver sends all of it through the network (honest nodes, then
attackers, each in index order, as the local engine does), runs the network to the round's end and
hands each shard its nodes' deliveries in time order, each with its virtual time; the shards fold and
record. The baselines (local-only, pooled) train on the shards too.

Ray is an optional extra, imported here only; backends.py picks this engine or the local one. The
studies run their grids of whole simulations on Ray through the same session (studies/ray_grid.py)."""
from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from manymodels.protocol import Identity, ReadingMemo

from .attacks import ATTACKS, AttackContext, folds
from .network import LinkModel, MemoryNetwork
from .batching import Threads, fold_nodes, publish_nodes, train_nodes
from .series import counts, new_series, record
from .simulator import (EPOCH_MS, ROUND_MS, assemble_report, baseline, build_member, check_rules,
                        finish_report, make_world, node_identity, node_report, out_of_sight)
from .spec import SimulationConfig, SimulationSpec
from ..core.transport import Receiver
from ..spec import SpecError

RAY_MISSING = "--backend ray needs Ray: pip install 'manymodels[ray]'"
# Read by Ray when it is first imported: with "0", every Ray process it starts advertises 127.0.0.1
# (as on a laptop) instead of the machine's network interface address.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

Sent = list[tuple[int, str, bytes]]  # (sender's index, peer, bytes), in send order
Deliveries = list[tuple[float, str, int, bytes]]  # (virtual time, sender's address, receiver's index, bytes)


def import_ray(loopback: bool):
    """Ray, or the one line that says how to install it. `loopback`: the Ray processes this one
    starts stay on 127.0.0.1 (it must be said before Ray is first imported)."""
    if loopback:
        os.environ.setdefault(LOOPBACK_SWITCH, "0")
    try:
        import ray
    except ImportError:
        raise SpecError(RAY_MISSING) from None
    return ray


def simulate_on_ray(spec: SimulationSpec, on_round: Callable[[int, float], None] | None = None
                    ) -> tuple[dict, list[dict]]:
    """The report the local engine gives for the spec, and where each shard ran: its Ray node's id
    and address and its nodes' indices. `spec.config.address`: the cluster to join ("auto": the one
    `ray start` started on this machine); None starts one on this machine, on loopback, for the run."""
    import_ray(loopback=spec.config.address is None)  # a missing Ray is said before any work
    started = time.perf_counter()
    world = make_world(spec)  # the driver's: the options checked before Ray starts, and the report's numbers
    check_rules(replace(spec.node, exchange=world.exchange), list(world.archs), spec.adjacency)
    with ray_session(spec.config.address) as ray:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actor = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(Shard)
        shards = [actor.remote(spec.config, indices) for indices in shard_indices(spec, max(1, cpus))]
        placement = ray.get([shard.where.remote() for shard in shards])
        network, per_node = _Driver(ray, spec, shards, placement).run(on_round)
    return finish_report(assemble_report(spec, world, per_node), spec, world, network, started), placement


@contextmanager
def ray_session(address: str | None) -> Iterator:
    """Ray, connected to the cluster at `address` for the `with` block ("auto": the one `ray start`
    started on this machine; None: one started on this machine, on loopback, and stopped after)."""
    ray = import_ray(loopback=address is None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's tip about accelerators: none are used
        ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=False,
                 logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def where_this_runs() -> dict:
    """The Ray node this actor or task runs on: its id and address."""
    import ray

    return {"ray_node": ray.get_runtime_context().get_node_id(), "address": ray.util.get_node_ip_address()}


def shard_indices(spec: SimulationSpec, count: int) -> list[list[int]]:
    """The node indices of each of at most `count` shards: every attacker on the first, the honest
    nodes dealt in blocks so that the shards hold about as many nodes each."""
    n = spec.config.nodes
    attackers = sorted(spec.attackers)
    honest = [i for i in range(n) if i not in spec.attackers]
    count = min(count, n)
    first = honest[:max(-(-n // count) - len(attackers), 0)]  # the first shard: the attackers, then honest nodes
    rest = np.array_split(np.array(honest[len(first):], dtype=int), max(count - 1, 1))
    shards = [sorted(attackers + first)] + [block.tolist() for block in rest]
    return [shard for shard in shards if shard]


class _Driver:
    """The network between the shards, run round by round."""

    def __init__(self, ray, spec: SimulationSpec, shards: list, placement: list[dict]) -> None:
        self.ray, self.spec, self.shards = ray, spec, shards
        c = spec.config
        self.network = MemoryNetwork(seed=c.seed, link=LinkModel(loss=c.loss))
        self.shard_of = {i: k for k, where in enumerate(placement) for i in where["nodes"]}
        self.inbox: list[Deliveries] = [[] for _ in shards]
        self.transports = []
        for i in range(c.nodes):
            transport = self.network.attach(node_identity(c.seed, i).peer_id)
            transport.set_receiver(self._receiver(i))
            self.transports.append(transport)
        self.omniscient = any(ATTACKS[name].omniscient for name in spec.attackers.values())

    def _receiver(self, i: int) -> Receiver:
        inbox = self.inbox[self.shard_of[i]]
        return lambda sender, data: inbox.append((self.network.now_ms, sender, i, data))

    def run(self, on_round: Callable[[int, float], None] | None) -> tuple[MemoryNetwork, list[dict]]:
        """Every round, then each node's entry in the report, by index."""
        ray, spec, shards, network = self.ray, self.spec, self.shards, self.network
        for r in range(spec.config.rounds):
            sent = [m for part in ray.get([s.train_and_publish.remote(r, network.now_ms) for s in shards])
                    for m in part]
            if spec.attackers:
                sent += ray.get(shards[0].publish_attackers.remote(self._honest_models()))
            for i, peer, data in sorted(sent, key=lambda m: (m[0] in spec.attackers, m[0])):  # stable: send order
                self.transports[i].send(peer, data)
            network.run_until((r + 1) * ROUND_MS, by_receiver=True)  # each shard's nodes one after another
            accuracy = _merged(ray.get([s.deliver_and_fold.remote(inbox, network.now_ms)
                                        for s, inbox in zip(shards, self.inbox)]))
            for inbox in self.inbox:
                inbox.clear()
            if on_round:
                on_round(r + 1, float(np.mean([accuracy[i] for i in range(spec.config.nodes)
                                                if i not in spec.attackers])))
        return network, self._entries()

    def _honest_models(self) -> dict[int, list[np.ndarray]]:
        """What the omniscient attackers read: the honest models of the shards but the attackers' own."""
        if not self.omniscient:
            return {}
        return _merged(self.ray.get([s.honest_models.remote() for s in self.shards[1:]]))

    def _entries(self) -> list[dict]:
        ray, shards = self.ray, self.shards
        archs = sorted(set(self.spec.archs))
        baselines = ray.get([s.baselines.remote(archs[k::len(shards)]) for k, s in enumerate(shards)])
        pooled = _merged([p for _, p in baselines])
        entries = _merged(ray.get([s.reports.remote(local_only, pooled) for s, (local_only, _) in
                                   zip(shards, baselines)]))
        return [entries[i] for i in range(self.spec.config.nodes)]


def _merged(parts: list[dict]) -> dict:
    return {key: value for part in parts for key, value in part.items()}


class Shard:
    """Some of a simulation's nodes, in a Ray actor: built as the local engine builds them, run on
    the driver's virtual time, sending into an outbox the driver empties."""

    def __init__(self, config: SimulationConfig, indices: list[int]) -> None:
        spec = self.spec = SimulationSpec.parse(config)
        self.world = make_world(spec)
        self.now_ms = 0.0
        self.outbox: Sent = []
        c = spec.config
        ids = [node_identity(c.seed, i) for i in range(c.nodes)]
        self.context = AttackContext([], c.nodes, len(spec.attackers), np.random.default_rng([c.seed, 0xBAD]))
        node_spec = replace(spec.node, exchange=self.world.exchange)
        clock = lambda: EPOCH_MS + int(self.now_ms)  # noqa: E731
        self.transports = {i: _Outbox(ids[i].peer_id, i, self.outbox) for i in indices}
        memo = ReadingMemo()
        self.nodes = {i: build_member(spec, node_spec, self.world, i, self.transports[i], clock, self.context,
                                      memo=memo) for i in indices}
        for i, node in self.nodes.items():
            node.neighbours = [ids[j].peer_id for j in spec.adjacency[i]]
        # the honest nodes as the attackers see them: their own, or the others' as the driver gathers them
        self.context.honest = [self.nodes.get(i) or _Remote(i, ids[i], _Model(self.world.archs[i]))
                               for i in range(c.nodes) if i not in spec.attackers]
        self.series = dict(zip(indices, new_series(len(indices))))
        self.before = {}

    def where(self) -> dict:
        return {**where_this_runs(), "nodes": sorted(self.nodes)}

    def train_and_publish(self, r: int, now_ms: float) -> Sent:
        """Train every node, publish the honest ones: what they sent."""
        self.now_ms, self.context.round = now_ms, r
        self.before = {i: counts(node) for i, node in self.nodes.items()}
        train_nodes(list(self.nodes.values()), self.spec.node.local_epochs, self.spec.config.batched)
        publish_nodes([node for i, node in self.nodes.items() if i not in self.spec.attackers], Threads(None, 1))
        return self._sent()

    def honest_models(self) -> dict[int, list[np.ndarray]]:
        return {i: node.learner.get_weights() for i, node in self.nodes.items() if i not in self.spec.attackers}

    def publish_attackers(self, models: dict[int, list[np.ndarray]]) -> Sent:
        """Publish the attackers, after the honest nodes (`models`: the other shards' honest models)."""
        for honest in self.context.honest:
            if isinstance(honest, _Remote):
                honest.learner.weights = models.get(honest.index)
        for i, node in self.nodes.items():
            if i in self.spec.attackers:
                node.publish()
        return self._sent()

    def _sent(self) -> Sent:
        sent = list(self.outbox)
        self.outbox.clear()
        return sent

    def deliver_and_fold(self, deliveries: Deliveries, now_ms: float) -> dict[int, float]:
        """Hand each node what reached it, at the time it arrived; fold; each node's accuracy."""
        for at, sender, i, data in deliveries:
            self.now_ms = at
            self.transports[i].receiver(sender, data)
        self.now_ms = now_ms
        fold_nodes([node for i, node in self.nodes.items() if folds(self.spec.attackers, i)], self.spec.config.batched)
        learners = [node.learner for node in self.nodes.values()]
        for (i, node), accuracy in zip(self.nodes.items(), self.world.accuracies(learners)):
            self.series[i]["history"].append(accuracy)
            record(self.series[i], node, self.before[i])
        out_of_sight()
        return {i: self.series[i]["history"][-1] for i in self.nodes}

    def baselines(self, archs: list[str]) -> tuple[dict[int, float], dict[str, float]]:
        """Each of this shard's nodes trained alone; one model on all the data for each of `archs`."""
        spec, world = self.spec, self.world
        return ({i: baseline(spec, world, world.alone(i)) for i in self.nodes},
                {arch: baseline(spec, world, world.pooled(arch)) for arch in archs})

    def reports(self, local_only: dict[int, float], pooled: dict[str, float]) -> dict[int, dict]:
        return {i: node_report(self.spec, self.world, i, node, self.series[i], local_only[i], pooled)
                for i, node in self.nodes.items()}


@dataclass
class _Outbox:
    """A shard's transport for one node: what it sends waits in the shard's outbox for the driver."""
    address: str
    index: int
    outbox: Sent
    receiver: Receiver | None = None

    def send(self, peer: str, data: bytes) -> None:
        self.outbox.append((self.index, peer, data))

    def set_receiver(self, receiver: Receiver) -> None:
        self.receiver = receiver


@dataclass
class _Model:
    """An honest model on another shard, as an omniscient attacker reads it (`get_weights`)."""
    architecture: str
    weights: list[np.ndarray] | None = None

    def get_weights(self) -> list[np.ndarray]:
        return self.weights


@dataclass
class _Remote:
    """An honest node on another shard, as the attack context shows it: its identity and model."""
    index: int
    identity: Identity
    learner: _Model
