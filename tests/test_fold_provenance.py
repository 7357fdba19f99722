"""A fold says what it did (`Folded`), for every exchange: whose messages went into the model, by
digest, and what the rule refused. The daemon logs it as provenance. Real nodes, real training, real
signed messages over the memory transport."""
import numpy as np
import pytest

from manymodels.aggregation import get_rule
from manymodels.node.core.exchange import (Distillation, DistillSettings, Mixed, SyntheticSamples,
                                           SyntheticSettings, WeightGossip)
from manymodels.node.core.node import Node
from manymodels.node.core.reputation import Reputation
from manymodels.node.learning.datasets import load_dataset
from manymodels.node.learning.generator import GaussianClassGenerator
from manymodels.node.learning.models import build_model
from manymodels.node.learning.probe import split_probe
from manymodels.node.learning.torch_learner import TorchLearner
from manymodels.node.sim.attacks import Attacker, AttackContext, GaussianNoise
from manymodels.node.sim.network import MemoryNetwork
from manymodels.protocol import Identity, open_envelope


@pytest.fixture(scope="module")
def digits():
    return split_probe(load_dataset("digits"), 100)


def _exchange(kind, probe, x, y, rule):
    counts = np.bincount(y, minlength=10).tolist()
    if kind == "weights":
        return WeightGossip(get_rule(rule))
    if kind == "distill":
        return Distillation(DistillSettings(probe, get_rule("logit-probmean"), counts))
    if kind == "mixed":
        return Mixed(WeightGossip(get_rule(rule)), Distillation(DistillSettings(probe, get_rule("logit-probmean"),
                                                                                counts)))
    generator = GaussianClassGenerator(x, y, (0.0, 1.0))
    return SyntheticSamples(SyntheticSettings(generator, np.random.default_rng(0), x.shape[1:], (0.0, 1.0)))


def _network(digits, kind, archs, rule="fedavg", reputation=0.0):
    """Nodes of the given architectures, each a neighbour of every other, trained one epoch."""
    probe, data = digits
    network = MemoryNetwork(seed=0)
    nodes = []
    for i, arch in enumerate(archs):
        x, y = data.x_train[i * 150:(i + 1) * 150], data.y_train[i * 150:(i + 1) * 150]
        identity = Identity(bytes([i + 1]) * 32)
        learner = TorchLearner(build_model(arch, data.input_shape, 10, seed=0), x, y, architecture=arch, seed=i)
        nodes.append(Node(identity, learner, network.attach(identity.peer_id), _exchange(kind, probe, x, y, rule),
                          num_classes=10, clock=lambda: 10_000 + int(network.now_ms),
                          reputation=Reputation(reputation)))
    for node in nodes:
        node.neighbours = [other.id for other in nodes if other is not node]
        node.train(1)
    return network, nodes


def _round(network, nodes) -> dict[str, dict[str, bytes]]:
    """Every node publishes and every message arrives; the digest of what each sent, by kind."""
    sent = {}
    for node in nodes:
        sent[node.id] = {}
        for data, kind in node.publication():
            node.send_to_neighbours(data, kind)
            sent[node.id][kind] = open_envelope(data, now_ms=node.clock()).digest
    network.run_until(1000)
    return sent


@pytest.mark.parametrize("kind, archs", [
    ("weights", ["mlp", "mlp", "mlp"]),
    ("distill", ["mlp", "logreg", "mlp"]),
    ("synthetic", ["logreg", "logreg", "logreg"]),
    ("mixed", ["mlp", "mlp", "logreg"]),  # the logreg folds logits only; the mlps weights from each other too
])
def test_a_fold_names_every_message_it_folded_and_no_other(digits, kind, archs):
    network, nodes = _network(digits, kind, archs)
    sent = _round(network, nodes)
    for node in nodes:
        expected = {(peer.id, digest) for peer in nodes if peer is not node
                    for payload_kind, digest in sent[peer.id].items()
                    if payload_kind != "weights" or peer.learner.architecture == node.learner.architecture}
        folded = node.fold()
        assert folded.changed and folded.refused == ()
        assert sorted(folded.inputs) == sorted(expected)  # each once
        assert folded.senders == sorted(peer.id for peer in nodes if peer is not node)
    assert nodes[2].stats.refused == ({"other_architecture": 2} if kind == "mixed" else {})
    assert all(not node.fold().inputs for node in nodes)  # nothing new arrived: nothing folded


def test_a_peer_banned_in_the_fold_is_not_among_its_inputs(digits):
    network, nodes = _network(digits, "weights", ["mlp"] * 4, rule="median", reputation=0.9)
    liar = nodes[3]
    liar.outbound = Attacker(GaussianNoise(), AttackContext(nodes[:3], 4, 1, np.random.default_rng(0)))
    sent = _round(network, nodes)
    folded = nodes[0].fold()
    assert nodes[0].banned == {liar.identity.public_key}
    assert sorted(folded.inputs) == sorted((peer.id, sent[peer.id]["weights"]) for peer in nodes[1:3])
    assert "attack" in sent[liar.id]  # what the liar sent went out as the attack's


def test_a_rule_that_cannot_fold_says_so_and_the_node_counts_it(digits):
    network, nodes = _network(digits, "weights", ["mlp", "mlp"], rule="krum:1")  # krum:1 needs 5 inputs
    before = nodes[0].learner.get_weights()
    _round(network, nodes)
    folded = nodes[0].fold()
    assert not folded.changed and folded.inputs == () and folded.refused == ("rule_cannot_fold",)
    assert nodes[0].stats.refused == {"rule_cannot_fold": 1}
    for got, want in zip(nodes[0].learner.get_weights(), before):
        np.testing.assert_array_equal(got, want)
