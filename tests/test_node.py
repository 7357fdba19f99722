"""Node, memory transport and store: real signing, real verification, real files."""
import os
import stat

import numpy as np
import pytest

from manymodels.aggregation import get_rule
from manymodels.node.core.exchange import WeightGossip
from manymodels.node.learning.models import build_model
from manymodels.node.learning.torch_learner import TorchLearner
from manymodels.node.core.node import Node
from manymodels.node.runtime.store import atomic_write, load_identity, save_identity
from manymodels.node.sim.network import LinkModel, MemoryNetwork
from manymodels.protocol import Identity, Weights, open_envelope, seal


def test_peer_id_is_libp2p_peer_id():
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    for seed in (bytes(32), bytes(range(32)), os.urandom(32)):
        expected = ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()
        assert Identity(seed).peer_id == expected


def test_identity_file_is_private_and_round_trips(tmp_path):
    path = tmp_path / "keys" / "node.pem"
    identity = Identity.generate()
    save_identity(path, identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).peer_id == identity.peer_id
    with pytest.raises(FileExistsError):
        save_identity(path, Identity.generate())
    assert load_identity(path).peer_id == identity.peer_id
    assert [p.name for p in path.parent.iterdir()] == ["node.pem"]  # no temp files left behind


def test_atomic_write_keeps_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "state.json"
    atomic_write(path, b"old")


    with pytest.raises(TypeError):
        atomic_write(path, object())  # cannot be written: the old content must survive
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def _node(network, index, x, y, rule="fedavg"):
    identity = Identity(bytes([index]) * 32)
    learner = TorchLearner(build_model("logreg", (4,), 2, seed=0), x, y, architecture="logreg", seed=index)
    return Node(identity, learner, network.attach(identity.peer_id), WeightGossip(get_rule(rule)),
                num_classes=2, clock=lambda: 1_000_000 + int(network.now_ms))


def _pair():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    network = MemoryNetwork(seed=1)
    a, b = _node(network, 1, x[:20], y[:20]), _node(network, 2, x[20:], y[20:])
    a.neighbours, b.neighbours = [b.id], [a.id]
    return network, a, b


def test_two_nodes_average_their_weights_over_signed_messages():
    network, a, b = _pair()
    a.learner.fit(3)
    b.learner.fit(3)
    wa, wb = a.learner.get_weights(), b.learner.get_weights()
    a.publish()
    b.publish()
    assert network.run_until(1000) == 2
    assert a.fold().changed and b.fold().changed
    for got_a, got_b, x, y in zip(a.learner.get_weights(), b.learner.get_weights(), wa, wb):
        np.testing.assert_allclose(got_a, (x + y) / 2, rtol=1e-6)
        np.testing.assert_allclose(got_b, (x + y) / 2, rtol=1e-6)
    assert a.stats.messages_accepted == b.stats.messages_accepted == 1
    assert a.stats.bytes_sent == b.stats.bytes_received > 0


def test_a_peer_claiming_a_billion_examples_weighs_no_more_than_the_median_claim():
    network, a, b = _pair()
    c = _node(network, 3, np.zeros((20, 4), np.float32), np.zeros(20, np.int64))
    a.neighbours = [b.id, c.id]
    b.neighbours = c.neighbours = [a.id]
    poison = [np.full_like(t, 100.0) for t in c.learner.get_weights()]
    c.learner.num_examples = 10**9
    c.learner.set_weights(poison)
    own, honest = a.learner.get_weights(), b.learner.get_weights()
    b.publish()
    c.publish()
    network.run_until(1000)
    assert a.fold().changed
    # fedavg over claims (20, 20, 10**9) capped at the median, 20: an equal three-way mean
    for got, x, y, z in zip(a.learner.get_weights(), own, honest, poison):
        np.testing.assert_allclose(got, (x + y + z) / 3, rtol=1e-5)


def test_hostile_bytes_are_counted_by_reason_and_the_node_keeps_working():
    network, a, b = _pair()
    hostile = network.attach("hostile")
    mallory = Identity(b"\x66" * 32)
    weights = Weights("logreg", 1, 20, b.learner.get_weights())
    valid = seal(mallory, weights, seq=1, ts_ms=1_000_000)
    forged = bytearray(seal(mallory, weights, seq=2, ts_ms=1_000_000))
    forged[forged.index(b"sig") + 6] ^= 1  # inside the signature bytes
    for data in (b"\x00garbage", valid[:-9], bytes(forged), valid, valid,
                 seal(mallory, weights, seq=3, ts_ms=1)):
        hostile.send(a.id, data)
    b.publish()
    network.run_until(1000)
    assert dict(a.stats.rejected) == {"malformed": 2, "bad_signature": 1, "replayed": 1, "stale": 1}
    assert a.stats.messages_accepted == 2  # mallory's first copy and b's weights
    assert a.fold().changed  # still folds what it got


def test_memory_network_is_deterministic_and_models_loss_and_churn():
    def run(seed):
        network = MemoryNetwork(seed=seed, link=LinkModel(loss=0.3))
        got = []
        for name in "abc":
            network.attach(name).set_receiver(lambda src, data, name=name: got.append((network.now_ms, name, data)))
        sender = network.attach("s")
        network.set_online("c", False)
        for i in range(50):
            for dst in "abc":
                sender.send(dst, bytes([i]))
        network.run_until(1000)
        return got, network.dropped

    first, dropped = run(7)
    assert run(7) == (first, dropped)
    assert run(8)[0] != first
    assert all(name != "c" for _, name, _ in first)  # offline node receives nothing
    assert 20 < len(first) < 80 and dropped == 150 - len(first)
    assert [t for t, _, _ in first] == sorted(t for t, _, _ in first)


def test_delivery_by_receiver_gives_each_the_same_messages_at_the_same_times():
    def run(by_receiver):
        network = MemoryNetwork(seed=3, link=LinkModel(loss=0.2))
        got = []
        for name in "abc":
            network.attach(name).set_receiver(
                lambda src, data, name=name: got.append((name, network.now_ms, src, data)))
        senders = [network.attach(f"s{k}") for k in range(3)]
        network.set_online("b", False)
        for i in range(30):
            for sender in senders:
                for dst in "abc":
                    sender.send(dst, bytes([i]))
        delivered = network.run_until(1000, by_receiver=by_receiver)
        return got, delivered, network.dropped, network.now_ms

    in_time, grouped = run(False), run(True)
    assert [g for g in grouped[0] if g[0] == "a"] == [g for g in in_time[0] if g[0] == "a"]
    assert sorted(grouped[0]) == sorted(in_time[0]) and grouped[1:] == in_time[1:]
    assert [name for name, *_ in grouped[0]] == sorted(name for name, *_ in in_time[0])  # a's, then c's
    assert [name for name, *_ in in_time[0]] != [name for name, *_ in grouped[0]]


def test_delivery_by_receiver_refuses_a_receiver_that_sends():
    network = MemoryNetwork(seed=0)
    a, b = network.attach("a"), network.attach("b")
    a.set_receiver(lambda src, data: a.send("b", data))
    b.set_receiver(lambda src, data: None)
    b.send("a", b"x")
    with pytest.raises(RuntimeError, match="in time order"):
        network.run_until(1000, by_receiver=True)


def test_a_pulled_message_must_be_the_one_asked_for_by_its_author_and_fresh():
    network, a, b = _pair()
    sealed = b.seal(Weights("logreg", 1, 20, b.learner.get_weights()))
    assert a.verify(b.id, sealed, author=b.id, digest=bytes(32)) is None
    assert dict(a.stats.rejected) == {"digest_mismatch": 1} and a.stats.messages_accepted == 0
    again = b.seal(Weights("logreg", 2, 20, b.learner.get_weights()))
    digest = open_envelope(again, now_ms=1_000_000).digest
    assert a.verify(b.id, again, author=a.id, digest=digest) is None  # not the announcement's author
    assert a.stats.rejected["foreign_author"] == 1
    assert a.verify(b.id, again, author=b.id, digest=digest) is not None
    assert a.verify(b.id, again, author=b.id, digest=digest) is None  # the same message again: a replay
    assert a.stats.rejected["replayed"] == 1 and a.stats.messages_accepted == 1


def test_claims_are_capped_at_the_lower_median_and_at_least_one():
    from manymodels.node.core.exchange import capped_at_median

    assert capped_at_median([20, 10**9]).tolist() == [20, 20]  # two claims: the liar gets no more
    assert capped_at_median([5, 0, 0, 7]).tolist() == [1, 0, 0, 1]  # zeros cannot zero every weight


def test_home_is_private_whatever_existed_before(tmp_path):
    from manymodels.node.runtime.store import Home

    home = tmp_path / "home"
    (home / "blobs").mkdir(parents=True, mode=0o755)
    (home / "model.msgpack").write_bytes(b"x")
    (home / "blobs" / "a.msg").write_bytes(b"y")
    for path in (home, home / "blobs"):
        path.chmod(0o755)
    for path in (home / "model.msgpack", home / "blobs" / "a.msg"):
        path.chmod(0o644)
    h = Home(home)
    h.identity()
    h.write_json(h.state_file, {"seq": 1})
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(home) == mode(home / "blobs") == 0o700
    assert {mode(p) for p in home.rglob("*") if p.is_file()} == {0o600}
    assert len(list(home.rglob("*"))) == 5  # blobs/, a.msg, model.msgpack, identity.pem, state.json


def test_replies_do_not_use_up_sequence_numbers():
    from manymodels.protocol import BlobResponse, Error

    network, a, b = _pair()
    a.seal(Weights("logreg", 1, 20, a.learner.get_weights()))
    before = a.seq
    for offset in range(100):
        a.seal(BlobResponse(bytes(32), offset, 100, b"x"))
        a.seal(Error("not_found", "00"))
    assert a.seq == before


def test_node_stats_survive_a_json_round_trip_and_keep_counting():
    import json

    from manymodels.node.core.node import NodeStats
    stats = NodeStats(bytes_sent=10, bytes_received=20, messages_accepted=3)
    stats.rejected["replayed"] += 2
    stats.sent_by_kind["weights"] += 1
    stats.rejected_from["peer"] += 2  # per connection: not kept
    again = NodeStats()
    again.restore(json.loads(json.dumps(stats.to_json())))
    assert (again.bytes_sent, again.bytes_received, again.messages_accepted) == (10, 20, 3)
    assert again.rejected == {"replayed": 2} and again.sent_by_kind == {"weights": 1} and not again.rejected_from
    again.rejected["replayed"] += 1  # Counters again, not dicts
    assert again.rejected_total == 3
    again.restore({})  # a state saved before counters were kept changes nothing
    assert again.messages_accepted == 3
