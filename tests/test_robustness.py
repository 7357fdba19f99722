"""Byzantine peers in the simulator: robust rules hold where averaging collapses, protocol attacks
never reach a rule, and reputation cuts off a persistently poisonous peer. Fixed seeds."""
import numpy as np
import pytest

from manymodels.node.sim.attacks import Attacker
from manymodels.node.sim.simulator import EPOCH_MS, SimulationConfig, run_simulation
from manymodels.node.spec import SpecError
from manymodels.protocol import open_envelope

pytestmark = pytest.mark.slow

BASE = SimulationConfig(nodes=10, rounds=8, partition="dirichlet:0.5", model="mlp", seed=0)


def run(**changes):
    return run_simulation(SimulationConfig(**{**BASE.__dict__, **changes}))


@pytest.fixture(scope="module")
def clean():
    return run(rule="trimmed:0.2")["summary"]["mean_accuracy"]


def test_averaging_collapses_and_a_robust_rule_holds_under_gaussian_noise(clean):
    attacked_mean = run(rule="fedavg", attacks=("gaussian:0.2",))
    attacked_trimmed = run(rule="trimmed:0.2", attacks=("gaussian:0.2",))
    assert attacked_mean["summary"]["mean_accuracy"] < 0.5
    assert attacked_trimmed["summary"]["mean_accuracy"] > clean - 0.05
    assert attacked_trimmed["summary"]["mean_accuracy"] > attacked_mean["summary"]["mean_accuracy"] + 0.3
    # two attackers, named in the report, left out of the honest summary
    assert len(attacked_mean["attackers"]) == 2
    assert {a["id"] for a in attacked_mean["attackers"]} == {a["id"] for a in attacked_trimmed["attackers"]}
    assert {n["attack"] for n in attacked_mean["nodes"]} == {None, "gaussian"}


def test_attackers_are_chosen_by_seed():
    ids = lambda seed: {a["id"] for a in run(seed=seed, rounds=1, attacks=("signflip:0.3",))["attackers"]}  # noqa: E731
    assert ids(1) == ids(1) and len(ids(1)) == 3
    positions = lambda seed: [n["attack"] is not None for n in run(seed=seed, rounds=1, attacks=("signflip:0.3",))["nodes"]]  # noqa: E731
    assert positions(1) != positions(2)


def test_forged_replayed_and_stale_messages_never_reach_a_rule():
    report = run(rule="fedavg", attacks=("forged:0.1", "replay:0.1", "stale:0.1"))
    honest = [n for n in report["nodes"] if n["attack"] is None]
    assert len(honest) == 7
    for node in honest:
        # everything the exchange (and thus the rule) saw came from the other honest nodes
        assert node["messages_accepted"] == (len(honest) - 1) * BASE.rounds
        assert set(node["rejected_by_reason"]) == {"bad_signature", "replayed", "stale"}
        # the forger's and the stale attacker's messages, and the replayer's copies of them
        assert node["rejected_by_reason"]["stale"] >= BASE.rounds
        assert node["rejected_by_reason"]["bad_signature"] >= BASE.rounds
    assert report["summary"]["mean_accuracy"] > 0.85  # the network learns on, undisturbed


def test_reputation_cuts_off_a_persistently_poisonous_peer():
    # a ban takes two poisoned rounds (1 -> 0.8 -> 0.64), which leave every honest model near chance;
    # 16 rounds leave time to recover from them
    report = run(rule="fedavg", rounds=16, attacks=("signflip:0.1",), reputation=0.7)
    attacker = report["attackers"][0]["id"]
    for node in report["nodes"]:
        if node["attack"] is None:
            assert node["banned"] == [attacker]
            assert node["reputation"][attacker] < 0.7
            assert min(score for peer, score in node["reputation"].items() if peer != attacker) > 0.7
            assert node["rejected_by_reason"]["banned"] > 0  # its later messages stop at the protocol layer
    clean = run(rule="fedavg", rounds=16)["summary"]["mean_accuracy"]
    assert report["summary"]["mean_accuracy"] > clean - 0.05
    without = run(rule="fedavg", rounds=16, attacks=("signflip:0.1",))
    assert report["summary"]["mean_accuracy"] > without["summary"]["mean_accuracy"] + 0.05


def test_reputation_cuts_off_peers_whose_synthetic_samples_carry_wrong_labels():
    report = run(exchange="synthetic", attacks=("synthetic:0.2",), reputation=0.7)
    attackers = {a["id"] for a in report["attackers"]}
    for node in report["nodes"]:
        if node["attack"] is None:
            assert set(node["banned"]) == attackers  # every poisoner, and no honest peer
    without = run(exchange="synthetic", attacks=("synthetic:0.2",))
    # their samples already in the pool are dropped with the ban
    assert report["summary"]["mean_accuracy"] > without["summary"]["mean_accuracy"] + 0.1


def test_a_node_that_banned_its_attackers_needs_fewer_inputs_for_its_rule(clean):
    # bulyan:2 needs 4f+3 = 11 inputs: all of them. Once the two attackers are banned, the nine
    # inputs left hold no known Byzantine peer, and bulyan:0 needs 3.
    report = run(nodes=11, rule="bulyan:2", attacks=("gaussian:0.2",), reputation=0.7)
    honest = [n for n in report["nodes"] if n["attack"] is None]
    assert all(len(n["banned"]) == 2 for n in honest)
    assert not any("rule_cannot_fold" in n["refused_by_reason"] for n in honest)
    assert report["summary"]["mean_accuracy"] > clean - 0.05


def test_colluding_attackers_read_this_rounds_honest_models():
    # the adversary hook runs after every node published and before delivery: the IPM attackers'
    # messages are then in flight, and must be -0.5 x the mean of the honest models as they are now
    checked = []

    def check(r, network, nodes):
        honest = [n.learner.get_weights() for n in nodes if not isinstance(n.outbound, Attacker)]
        expected = [-0.5 * np.mean(layer, axis=0) for layer in zip(*honest)]
        attackers = {n.id for n in nodes if isinstance(n.outbound, Attacker)}
        for _, _, src, _, data in network._queue:
            if src in attackers:
                sent = open_envelope(data, now_ms=EPOCH_MS + int(network.now_ms)).payload.tensors
                for got, want in zip(sent, expected):
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
                checked.append(r)

    run_simulation(SimulationConfig(**{**BASE.__dict__, "rounds": 3, "attacks": ("ipm:0.3",)}), adversary=check)
    assert sorted(set(checked)) == [0, 1, 2]


def test_rules_that_cannot_work_with_the_neighbour_count_say_so_at_start():
    with pytest.raises(SpecError, match=r"bulyan:2 needs n >= 4f\+3 = 11 inputs, got n=10"):
        run(rule="bulyan:2", rounds=1)
    with pytest.raises(SpecError, match="no honest node"):
        run(attacks=("gaussian:0.5", "signflip:0.5"), rounds=1)
