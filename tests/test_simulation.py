"""Simulations end to end: real torch training, every message signed and verified."""
import copy

import pytest

from manymodels.node.sim.simulator import EPOCH_MS, SimulationConfig, run_simulation
from manymodels.node.spec import SpecError
from manymodels.protocol import Identity, Weights, seal

pytestmark = pytest.mark.slow

FAST = SimulationConfig(nodes=6, rounds=8, dataset="digits", partition="dirichlet:0.3", model="mlp", seed=3)


@pytest.fixture(scope="module")
def fast_report():
    return run_simulation(FAST)


def _without_wall_time(report):
    report = copy.deepcopy(report)
    del report["summary"]["wall_seconds"]
    return report


def test_gossip_beats_local_only_on_a_non_iid_split(fast_report):
    s = fast_report["summary"]
    # Alone, each node sees a few classes and cannot pass ~60 %; learning from peers must.
    assert s["mean_local_only_accuracy"] < 0.75
    assert s["mean_accuracy"] > 0.85
    assert s["mean_accuracy"] > s["mean_local_only_accuracy"] + 0.15
    assert s["min_accuracy"] > 0.8
    assert s["pooled_accuracy"] > 0.9
    assert s["rejected_messages"] == 0


def test_report_has_every_field_per_node(fast_report):
    assert len(fast_report["nodes"]) == FAST.nodes
    for node in fast_report["nodes"]:
        assert node["id"].startswith("12D3KooW")
        assert len(node["history"]) == FAST.rounds
        assert node["bytes_sent"] == sum(node["bytes_sent_by_kind"].values()) > 0
        assert node["bytes_received"] > 0
        assert node["rejected_messages"] == 0
        assert 0 <= node["local_only_accuracy"] <= 1
    assert len({n["id"] for n in fast_report["nodes"]}) == FAST.nodes


def test_same_seed_same_numbers_other_seed_other_numbers(fast_report):
    assert _without_wall_time(run_simulation(FAST)) == _without_wall_time(fast_report)
    other = run_simulation(SimulationConfig(**{**FAST.__dict__, "seed": 4}))
    assert other["summary"]["mean_accuracy"] != fast_report["summary"]["mean_accuracy"] or \
        other["nodes"][0]["id"] != fast_report["nodes"][0]["id"]


def test_hostile_peer_is_rejected_counted_and_the_network_still_learns():
    config = SimulationConfig(nodes=4, rounds=6, partition="dirichlet:0.5", model="logreg", seed=1)
    mallory = Identity(b"\x42" * 32)
    state = {}

    def adversary(round_index, network, nodes):
        if "endpoint" not in state:
            state["endpoint"] = network.attach(mallory.peer_id)
        now = EPOCH_MS + int(network.now_ms)
        honest = nodes[0].learner.get_weights()
        good = seal(mallory, Weights("logreg", round_index, 1, honest), seq=10 + round_index, ts_ms=now)
        forged = bytearray(good)
        forged[forged.index(b"sig") + 10] ^= 0xFF
        tampered = bytearray(good)
        tampered[-3] ^= 0x01  # inside the payload: digest no longer matches
        stale = seal(mallory, Weights("logreg", 0, 1, honest), seq=1000 + round_index, ts_ms=now - 3_600_000)
        for node in nodes:
            # good twice (the copy is a replay), forged, tampered, stale, truncated, not msgpack,
            # and a map header claiming 4 G entries
            for data in (good, good, bytes(forged), bytes(tampered), stale, good[:50], b"\xc1",
                         b"\xdf\xff\xff\xff\xff"):
                state["endpoint"].send(node.id, data)

    report = run_simulation(config, adversary=adversary)
    for node in report["nodes"]:
        assert node["rejected_by_reason"] == {
            "bad_signature": 6, "digest_mismatch": 6, "malformed": 18, "replayed": 6, "stale": 6}
        assert node["rejected_messages"] == 42
    assert report["summary"]["rejected_messages"] == 42 * config.nodes
    assert report["summary"]["mean_accuracy"] > report["summary"]["mean_local_only_accuracy"]


@pytest.mark.parametrize("change, message", [
    ({"rule": "nope"}, "unknown rule"),
    ({"partition": "dirichlet:-1"}, "dirichlet"),
    ({"topology": "star"}, "topology"),
    ({"model": "transformer"}, "unknown model"),
    ({"dataset": "imagenet"}, "unknown dataset"),
    ({"rule": "krum:2", "topology": "ring"}, "krum"),
])
def test_bad_configuration_is_one_clear_error(change, message):
    with pytest.raises(SpecError, match=message):
        run_simulation(SimulationConfig(**{**FAST.__dict__, **change, "rounds": 1}))
