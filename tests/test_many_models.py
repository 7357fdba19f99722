"""Nodes of different architectures learn from each other through predictions and samples."""
import numpy as np
import pytest

from manymodels.aggregation import get_rule
from manymodels.node.core.exchange import (Distillation, DistillSettings, SyntheticSamples, SyntheticSettings,
                                      WeightGossip)
from manymodels.node.learning.datasets import load_dataset
from manymodels.node.learning.forest import ForestLearner
from manymodels.node.learning.generator import GaussianClassGenerator
from manymodels.node.learning.models import build_model
from manymodels.node.learning.probe import ProbeError, load_probe, split_probe
from manymodels.node.learning.torch_learner import TorchLearner
from manymodels.node.core.node import Node
from manymodels.node.sim.simulator import SimulationConfig, run_simulation
from manymodels.node.spec import SpecError
from manymodels.node.sim.network import MemoryNetwork
from manymodels.protocol import Identity, Logits, SyntheticBatch, seal

HETERO = SimulationConfig(nodes=5, rounds=8, model="mixed", exchange="distill", partition="dirichlet:0.1", seed=1)


@pytest.fixture(scope="module")
def distill_report():
    return run_simulation(HETERO)


@pytest.mark.slow
def test_five_architectures_beat_local_only_by_distillation_on_a_non_iid_split(distill_report):
    s = distill_report["summary"]
    assert set(s["architectures"]) == {"logreg", "mlp", "mlp-wide", "cnn", "forest"}
    assert s["mean_accuracy"] > s["mean_local_only_accuracy"] + 0.2
    for node in distill_report["nodes"]:
        assert node["final_accuracy"] > node["local_only_accuracy"] + 0.05, node["model"]
        # only logits travel: no architecture could use another's weights
        assert set(node["bytes_sent_by_kind"]) == {"logits"}
        assert node["refused_by_reason"] == {}


@pytest.mark.slow  # the distillation run of the test above
def test_logits_cost_far_fewer_bytes_than_weights(distill_report):
    weights = run_simulation(SimulationConfig(**{**HETERO.__dict__, "model": "mlp", "exchange": "weights",
                                                 "rounds": 1}))
    per_round_weights = weights["summary"]["bytes_sent"]
    per_round_logits = distill_report["summary"]["bytes_sent"] / HETERO.rounds
    # 200 probe inputs x 10 classes in float16 vs an MLP's 9.6 k float32 parameters: about 9x
    assert per_round_weights > 5 * per_round_logits


@pytest.mark.slow
@pytest.mark.parametrize("exchange", ["synthetic", "mixed"])
def test_synthetic_and_mixed_exchanges_beat_local_only(exchange):
    config = SimulationConfig(**{**HETERO.__dict__, "exchange": exchange, "rounds": 5})
    report = run_simulation(config)
    s = report["summary"]
    assert s["mean_accuracy"] > s["mean_local_only_accuracy"] + 0.2
    kinds = set().union(*(n["bytes_sent_by_kind"] for n in report["nodes"]))
    assert kinds == ({"synthetic"} if exchange == "synthetic" else {"weights", "logits"})
    for node in report["nodes"]:
        per_round = node["bytes_sent_per_round"]
        assert len(per_round) == config.rounds
        assert sum(sum(r.values()) for r in per_round) == node["bytes_sent"]


@pytest.mark.slow
def test_weights_exchange_refuses_other_architectures():
    report = run_simulation(SimulationConfig(nodes=3, rounds=2, model="logreg,mlp,forest", exchange="weights"))
    logreg = report["nodes"][0]
    assert logreg["refused_by_reason"] == {"other_architecture": 2}  # the mlp's weights, twice
    assert "weights" not in report["nodes"][2]["bytes_sent_by_kind"]  # a forest has none to send


# --- node-level checks, real signed messages over the memory transport --------------------------

@pytest.fixture(scope="module")
def digits():
    return split_probe(load_dataset("digits"), 100)


def _synthetic_node(network, data, index, **settings):
    x, y = data.x_train[index], data.y_train[index]
    identity = Identity(bytes([len(network._receivers) + 1]) * 32)
    generator = GaussianClassGenerator(x, y, (0.0, 1.0))
    exchange = SyntheticSamples(SyntheticSettings(generator, np.random.default_rng(0), data.input_shape,
                                                  (0.0, 1.0), **settings))
    learner = TorchLearner(build_model("logreg", data.input_shape, 10, seed=0), x, y, architecture="logreg")
    return Node(identity, learner, network.attach(identity.peer_id), exchange, num_classes=10,
                clock=lambda: 10_000 + int(network.now_ms))


def _send_from(network, sender: Identity, to: Node, payload, seq):
    network.attach(sender.peer_id) if sender.peer_id not in network._receivers else None
    network._send(sender.peer_id, to.id, seal(sender, payload, seq, 10_000 + int(network.now_ms)))


def test_synthetic_batches_are_checked_against_the_card_and_the_receivers_policy(digits):
    _, data = digits
    network = MemoryNetwork(seed=0)
    receiver = _synthetic_node(network, data, np.arange(0, 300), accept_licences=("CC0-1.0",))
    sender = _synthetic_node(network, data, np.arange(300, 600), licence="CC-BY-NC-4.0")
    sender.neighbours = [receiver.id]
    sender.publish()  # a licence the receiver does not accept
    network.run_until(1000)
    assert receiver.stats.refused == {"licence_refused": 1}
    assert receiver.stats.rejected_total == 0  # the message itself was valid

    mallory = Identity(b"\x07" * 32)
    x, y = np.full((4, 1, 8, 8), 0.5, np.float32), np.array([0, 1, 2, 3])
    card = {"licence": "CC0-1.0", "consent": "c", "retention": "r", "generator": "g", "source": mallory.peer_id,
            "digest": b""}

    def batch(x, y, **changes):
        b = SyntheticBatch(x, y, {**card})
        b.card["digest"] = b.content_digest()
        b.card.update(changes)
        return b

    cases = [
        (batch(np.full((4, 64), 0.5, np.float32), y), "sample_shape"),
        (batch(x * 3, y), "value_range"),
        (batch(x, np.array([0, 1, 2, 11])), "label_set"),
        (batch(x, y, source=Identity(b"\x08" * 32).peer_id), "card_source_mismatch"),
        (batch(x, y, digest=b"\x00" * 32), "card_digest_mismatch"),
        (batch(x, y), None),
    ]
    for seq, (payload, _) in enumerate(cases, start=1):
        _send_from(network, mallory, receiver, payload, seq)
    # and one whose sample and label counts disagree: stopped by the protocol layer
    bad = batch(x, y)
    object.__setattr__(bad, "y", np.array([0, 1]))
    _send_from(network, mallory, receiver, bad, 99)
    network.run_until(2000)
    expected = {reason: 1 for _, reason in cases if reason}
    assert receiver.stats.refused == {"licence_refused": 1, **expected}
    assert dict(receiver.stats.rejected) == {"shape_mismatch": 1}
    extra = receiver.exchange.extra()
    assert extra is not None and len(extra.y) == 4 and extra.weight == 0.5  # only the good batch
    assert receiver.exchange.settings.cards[-1]["source"] == mallory.peer_id


def test_logits_on_another_probe_set_are_refused(digits):
    probe, data = digits
    network = MemoryNetwork(seed=0)
    settings = DistillSettings(probe, get_rule("logit-probmean"), [10] * 10)
    identity = Identity(b"\x01" * 32)
    learner = TorchLearner(build_model("mlp", data.input_shape, 10, seed=0), data.x_train[:200],
                           data.y_train[:200], architecture="mlp")
    node = Node(identity, learner, network.attach(identity.peer_id), Distillation(settings), num_classes=10,
                clock=lambda: 10_000)
    peer = Identity(b"\x02" * 32)
    logits = np.zeros((len(probe.x), 10), np.float16)
    _send_from(network, peer, node, Logits(b"\x01" * 32, "cnn", 1, 2.0, logits, [1] * 10), 1)
    _send_from(network, peer, node, Logits(probe.digest, "cnn", 1, 2.0, logits[:5], [1] * 10), 2)
    _send_from(network, peer, node, Logits(probe.digest, "cnn", 1, 2.0, logits, [1] * 10), 3)
    network.run_until(1000)
    assert node.stats.refused == {"other_probe_set": 1, "logits_shape": 1}
    assert node.fold().changed


@pytest.mark.usefixtures("one_torch_thread")  # two threads under load: 30 s instead of 1
def test_distillation_teaches_a_forest_classes_it_never_saw(digits):
    probe, data = digits
    mine = np.flatnonzero(data.y_train < 5)
    forest = ForestLearner(data.x_train[mine], data.y_train[mine], 10)
    teacher = TorchLearner(build_model("mlp", data.input_shape, 10, seed=0), data.x_train, data.y_train,
                           architecture="mlp")
    teacher.fit(15)
    high = data.y_test >= 5
    assert forest.evaluate(data.x_test[high], data.y_test[high])["accuracy"] == 0.0
    from manymodels.node.learning.learner import log_soft_labels
    forest.distill(probe.x, log_soft_labels(teacher.predict(probe.x), 2.0), 2.0, 1)
    # from the ~50 probe inputs of those classes alone, pseudo-labelled by the teacher
    assert forest.evaluate(data.x_test[high], data.y_test[high])["accuracy"] > 0.4
    assert forest.get_weights() == [] and not forest.supports_weights


def test_generator_samples_the_classes_it_saw_within_range(digits):
    _, data = digits
    mine = np.flatnonzero(np.isin(data.y_train, [3, 7]))
    generator = GaussianClassGenerator(data.x_train[mine], data.y_train[mine], (0.0, 1.0))
    x, y = generator.sample(50, np.random.default_rng(0))
    assert x.shape == (100, 1, 8, 8) and x.dtype == np.float32
    assert set(y.tolist()) == {3, 7} and 0.0 <= x.min() and x.max() <= 1.0
    # samples of class 3 sit nearer the real 3s' mean than the real 7s' mean
    real3 = data.x_train[data.y_train == 3].mean(axis=0)
    real7 = data.x_train[data.y_train == 7].mean(axis=0)
    fake3 = x[y == 3].mean(axis=0)
    assert np.linalg.norm(fake3 - real3) < 0.5 * np.linalg.norm(fake3 - real7)


def test_probe_digest_is_stable_and_user_probe_files_are_checked(digits, tmp_path):
    probe, data = digits
    again, _ = split_probe(load_dataset("digits", seed=5), 100)
    assert again.digest == probe.digest and len(probe.digest) == 32
    np.save(tmp_path / "probe.npy", probe.x[:10])
    assert load_probe(tmp_path / "probe.npy", data.input_shape).x.shape == (10, 1, 8, 8)
    np.save(tmp_path / "flat.npy", probe.x[:10].reshape(10, 64))
    with pytest.raises(ProbeError, match="expected numbers shaped"):
        load_probe(tmp_path / "flat.npy", data.input_shape)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ProbeError, match="cannot read"):
        load_probe(tmp_path / "objects.npy", data.input_shape)


@pytest.mark.parametrize("change, message", [
    pytest.param({"model": "mixed", "dataset": "mnist1d"}, "cnn needs image input", marks=pytest.mark.slow),
    ({"model": "mlp,rnn"}, "unknown model 'rnn'"),
    ({"logit_rule": "median"}, "weights rule"),
    ({"exchange": "gradients"}, "unknown exchange"),
    ({"exchange": "mixed", "rule": "krum:1", "model": "mlp,cnn", "nodes": 6}, "2 same-architecture neighbours"),
])
def test_many_model_configuration_errors(change, message):
    with pytest.raises(SpecError, match=message):
        run_simulation(SimulationConfig(**{**HETERO.__dict__, "rounds": 1, **change}))
