"""Data value (studies/value.py, studies/value_study.py): the analysis on games with known answers,
then on simulated networks, against exact Shapley and with planted peers whose worth is known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from manymodels.studies.value import (efficient, exact_shapley, leave_one_out, monte_carlo_shapley,
                                      peer_totals, spearman)


def additive(weights):
    """Model i's utility: its own base plus the weight of each peer in the coalition (weights[j, i])."""
    return lambda i, s: 0.5 + sum(weights[j, i] for j in s)


def test_additive_game_values_are_the_weights():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(4, 4))
    values = exact_shapley(additive(weights), 4, range(4))
    off = ~np.eye(4, dtype=bool)
    assert np.allclose(values[off], weights[off])
    assert np.isnan(np.diag(values)).all()
    assert np.allclose(leave_one_out(additive(weights), 4, range(4))[off], weights[off])


def test_symmetric_peers_split_equally_and_columns_sum_to_the_networks_gain():
    game = lambda i, s: min(len(s), 2) / 2  # noqa: E731  any two peers are as good as all
    values = exact_shapley(game, 5, range(5))
    off = ~np.eye(5, dtype=bool)
    assert np.allclose(values[off], 1 / 4)
    assert np.allclose(np.nansum(values, axis=0), game(0, frozenset({1, 2, 3, 4})) - game(0, frozenset()))
    # leave-one-out misses what any two can replace: every peer is worth nothing alone
    assert np.allclose(leave_one_out(game, 5, range(5))[off], 0)


def test_a_null_peer_gets_zero_and_unvalued_models_are_nan():
    game = lambda i, s: len(s - {3}) ** 0.5  # noqa: E731  peer 3 adds nothing to anyone
    values = exact_shapley(game, 4, [0, 1, 2])
    assert np.allclose(values[3, :3], 0)
    assert np.isnan(values[:, 3]).all()
    mc = monte_carlo_shapley(game, 4, [0, 1, 2], permutations=20)
    assert np.allclose(mc.values[3, :3], 0) and np.isnan(mc.values[:, 3]).all()


def test_monte_carlo_converges_to_exact_on_five_players():
    rng = np.random.default_rng(2)
    weights, synergy = rng.uniform(0, 1, size=(5, 5)), rng.uniform(0, 1, size=5)
    game = lambda i, s: sum(weights[j, i] for j in s) + synergy[i] * (len(s) >= 3)  # noqa: E731
    exact = exact_shapley(game, 5, range(5))
    few = monte_carlo_shapley(game, 5, range(5), permutations=10, seed=3)
    many = monte_carlo_shapley(game, 5, range(5), permutations=2000, seed=3)
    off = ~np.eye(5, dtype=bool)
    assert np.abs(many.values - exact)[off].max() < 0.03
    assert many.max_stderr < few.max_stderr < 0.3
    assert np.abs(many.values - exact)[off].max() < 4 * many.max_stderr
    assert spearman(many.values, exact) > 0.95 and many.permutations == 2000 and many.truncated == 0


def test_antithetic_orders_pair_each_order_with_its_reverse():
    # model 0 and two other peers: an order and its reverse are both orders of the two, so an
    # antithetic pair is exact Shapley for any game; two independent orders are often the same one
    rng = np.random.default_rng(4)
    values = rng.normal(size=8)
    game = lambda i, s: values[sum(1 << j for j in s)] if i == 0 else 0.0  # noqa: E731
    exact = exact_shapley(game, 3, [0])
    for seed in range(10):
        pair = monte_carlo_shapley(game, 3, [0], permutations=2, seed=seed, antithetic=True)
        assert np.allclose(pair.values[1:, 0], exact[1:, 0])
    plain = [monte_carlo_shapley(game, 3, [0], permutations=2, seed=seed).values[1:, 0] for seed in range(10)]
    assert not all(np.allclose(v, exact[1:, 0]) for v in plain)


def test_truncation_skips_what_cannot_matter():
    game = lambda i, s: min(len(s), 1)  # noqa: E731  the first peer brings everything
    mc = monte_carlo_shapley(game, 4, range(4), permutations=50, tolerance=0.01)
    assert mc.truncated == pytest.approx(2 / 3)  # of three peers per model, only the first is measured
    assert np.allclose(np.nansum(mc.values, axis=0), 1)


def test_efficiency_scales_each_column_to_its_gain():
    values = np.array([[np.nan, 2.0, 1.0], [1.0, np.nan, -1.0], [3.0, 2.0, np.nan]])
    scaled = efficient(values, np.array([0.2, 0.1, -0.5]))
    assert np.allclose(np.nansum(scaled, axis=0)[:2], [0.2, 0.1])
    assert np.allclose(scaled[:, 2], values[:, 2], equal_nan=True)  # a column summing to 0 is left alone
    assert np.allclose(scaled[1:, 0] / values[1:, 0], 0.05)
    assert np.allclose(efficient(values, np.array([-0.2, 0.1, 0.0]))[:, 0], values[:, 0], equal_nan=True)  # other sign


def test_spearman_and_totals():
    a = np.array([[np.nan, 1, 2], [3, np.nan, 5], [6, 7, np.nan]])
    assert spearman(a, a * 2 + 1) == pytest.approx(1)
    assert spearman(a, -a) == pytest.approx(-1)
    assert math.isnan(spearman(a, np.ones_like(a)))
    assert peer_totals(a).tolist() == [3, 8, 13]


# --- on simulated networks: 4-5 peers, logistic regression on digits, 5 rounds (a few seconds each)

@pytest.mark.slow
def test_a_network_of_some_nodes_is_theirs_and_a_node_alone_is_local_only():
    from manymodels.node.sim.simulator import make_world, run_members, run_simulation
    from manymodels.node.sim.spec import SimulationConfig, SimulationSpec

    config = SimulationConfig(nodes=4, rounds=3, model="logreg")
    report, spec = run_simulation(config), SimulationSpec.parse(config)
    world = make_world(spec)
    assert run_members(spec, world, [0, 1, 2, 3]) == {i: n["final_accuracy"] for i, n in enumerate(report["nodes"])}
    assert [run_members(spec, world, [i])[i] for i in range(4)] == [n["local_only_accuracy"] for n in report["nodes"]]
    pair = run_members(spec, world, [1, 3])
    assert set(pair) == {1, 3} and pair != {1: report["nodes"][1]["final_accuracy"], 3: report["nodes"][3]["final_accuracy"]}


@pytest.mark.slow
@pytest.mark.parametrize("exchange", ["weights", "distill"])
def test_a_replayed_fold_with_every_sender_is_the_real_fold(exchange):
    import copy

    from manymodels.node.sim.simulator import make_world, run_members
    from manymodels.node.sim.spec import SimulationConfig, SimulationSpec

    spec = SimulationSpec.parse(SimulationConfig(nodes=3, rounds=2, model="logreg", exchange=exchange))
    world, replayed = make_world(spec), {}

    def before_fold(r, i, node):
        learner = copy.deepcopy(node.learner)
        node.refold(learner, {m.sender for m in node.received})
        replayed[i] = world.accuracy(learner)
        alone = copy.deepcopy(node.learner)
        node.refold(alone, set())
        assert world.accuracy(alone) == world.accuracy(node.learner)  # nobody's messages: the model as it is
    assert run_members(spec, world, [0, 1, 2], before_fold) == replayed

@pytest.mark.slow
@pytest.mark.parametrize("model, rule", [("logreg", "fedavg"), ("mlp", "gossip"), ("mlp", "median")])
def test_coalition_weights_are_the_replayed_folds(model, rule):
    # what gtg reads instead of replaying a weights fold: a linear rule's coefficients times the
    # decoded inputs (fedavg, gossip), another built-in rule run on them (median)
    import copy
    from itertools import combinations

    from manymodels.node.sim.simulator import make_world, run_members
    from manymodels.node.sim.spec import SimulationConfig, SimulationSpec

    spec = SimulationSpec.parse(SimulationConfig(nodes=5, rounds=2, model=model, rule=rule))
    world, compared = make_world(spec), []

    def before_fold(r, i, node):
        senders = sorted({m.sender for m in node.received})
        coalitions = [set(c) for size in range(len(senders) + 1) for c in combinations(senders, size)]
        stacked = node.coalition_weights()(coalitions)
        for k, coalition in enumerate(coalitions):
            weights, replayed = [t[k] for t in stacked], copy.deepcopy(node.learner)
            node.refold(replayed, coalition)
            assert all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(weights, replayed.get_weights()))
            compared.append(len(coalition))
    run_members(spec, world, list(range(5)), before_fold)
    assert len(compared) == 5 * 2 * 2 ** 4 and max(compared) == 4


@pytest.mark.slow
@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_the_one_run_estimate_is_the_same_without_replays(monkeypatch, model):
    from manymodels.node.sim.foldlog import LoggedNode
    from manymodels.node.sim.spec import SimulationConfig
    from manymodels.studies.value_study import Runs, ValueSettings, one_run_estimate

    runs, settings = Runs(SimulationConfig(nodes=5, rounds=3, model=model)), ValueSettings(methods=("gtg",))
    fast, fast_cost = one_run_estimate(runs, settings)
    monkeypatch.setattr(LoggedNode, "coalition_weights", lambda self: None)  # every fold replayed
    replayed, replayed_cost = one_run_estimate(runs, settings)
    assert np.allclose(fast, replayed, atol=1e-9, equal_nan=True)
    assert fast_cost["cost"]["refolds"] == replayed_cost["cost"]["refolds"] > 0


def study(**changes):
    from manymodels.node.sim.spec import SimulationConfig
    from manymodels.studies.value_study import ValueSettings, value_study

    config = SimulationConfig(**{"nodes": 4, "rounds": 5, "model": "logreg", **changes})
    return value_study(config, ValueSettings(methods=("exact", "loo", "mc", "gtg"), permutations=30))


def totals(result, method="exact"):
    return np.array(result["methods"][method]["totals"])


@pytest.fixture(scope="module")
def plain():
    return study()


@pytest.fixture(scope="module")
def planted():
    return study(nodes=5, plants=("shuffled:0", "tiny:1", "duplicate:2:3"))


@pytest.mark.slow
def test_estimates_agree_with_exact_shapley_and_say_their_cost(plain):
    agreement, methods = plain["agreement_with_exact"], plain["methods"]
    assert agreement["mc"]["spearman"] >= 0.8  # measured 0.91
    assert agreement["gtg"]["spearman"] >= 0.6  # measured 0.62: below the 0.8 goal (docs/STUDIES.md)
    assert methods["exact"]["cost"]["simulations"] == 2 ** 4 - 1 and methods["loo"]["cost"]["simulations"] == 5
    assert methods["gtg"]["cost"]["simulations"] == 1 and methods["gtg"]["cost"]["refolds"] > 0
    assert methods["mc"]["convergence"]["permutations"] == 30 and methods["mc"]["convergence"]["max_stderr"] < 0.05
    # efficiency: each model's column sums to what the network added to it
    exact = np.array(methods["exact"]["values"], dtype=float)
    gain = np.array(plain["accuracy"]["network"]) - np.array(plain["accuracy"]["alone"])
    assert np.allclose(np.nansum(exact, axis=0), gain, atol=1e-6)
    assert np.allclose(np.nansum(np.array(methods["gtg"]["values"], dtype=float), axis=0), gain, atol=1e-5)


@pytest.mark.slow
def test_planted_peers_get_the_values_they_should(planted):
    t = totals(planted)
    assert [p["plant"] for p in planted["peers"]] == ["shuffled", "tiny:5", None, "duplicate of 2", None]
    assert planted["peers"][1]["num_examples"] == 5
    assert t.argmin() == 0 and t[0] < 0  # shuffled labels: the lowest, and it hurts
    assert abs(t[1]) < 0.25 * t.max()  # almost no data: near zero
    assert abs(t[2] - t[3]) < 0.1 * (t[2] + t[3])  # the same data: the value split between the two
    assert planted["agreement_with_exact"]["gtg"]["spearman"] >= 0.5  # measured 0.62


@pytest.mark.slow
def test_an_attacker_is_valued_below_zero_by_every_method():
    result = study(nodes=5, attacks=("signflip:0.2",))
    attacker = next(p["index"] for p in result["peers"] if p["attack"])
    for method in result["methods"]:
        t = totals(result, method)
        assert t[attacker] < 0 and t.argmin() == attacker, method
        assert all(v is None for v in np.array(result["methods"][method]["values"], dtype=object)[:, attacker])
    assert result["agreement_with_exact"]["gtg"]["spearman"] >= 0.6  # measured 0.70


def test_planted_peers_change_only_their_partitions():
    from manymodels.node.sim.plants import PlantError, parse_plants

    plants = parse_plants(("shuffled:3", "duplicate:0:2", "tiny:1:3"), 4)
    parts = [np.arange(10 * k, 10 * k + 10) for k in range(4)]
    planted = plants.partitions(parts, seed=0)
    assert planted[0].tolist() == planted[2].tolist() == parts[0].tolist() and planted[3] is parts[3]
    assert len(planted[1]) == 3 and set(planted[1]) <= set(parts[1])
    y = np.arange(10)
    assert sorted(plants.labels(3, y, seed=0)) == y.tolist() and plants.labels(3, y, seed=0).tolist() != y.tolist()
    assert plants.labels(2, y, seed=0) is y
    for bad in ("tiny:4", "nope:1", "duplicate:1", "duplicate:1:1", "tiny:1:0", "shuffled:x"):
        with pytest.raises(PlantError, match=f"bad plant '{bad}'"):
            parse_plants((bad,), 4)


def test_mistakes_are_one_line():
    from manymodels.node.spec import SpecError
    from manymodels.node.sim.spec import SimulationConfig
    from manymodels.studies.value_study import ValueSettings

    with pytest.raises(SpecError, match="unknown value method nope"):
        ValueSettings(methods=("loo", "nope")).check(SimulationConfig(nodes=4))
    with pytest.raises(SpecError, match="at most 8 nodes"):
        ValueSettings(methods=("exact",)).check(SimulationConfig(nodes=9))
    with pytest.raises(SpecError, match="bad plant 'tiny:7'"):
        study(plants=("tiny:7",))
    with pytest.raises(SpecError, match="synthetic samples act only in the next training"):
        study(exchange="synthetic")


@pytest.mark.slow
def test_study_value_quick_from_the_console_script(cli, tmp_path):
    import json

    out = cli("study", "value", "--quick", "--json", "--methods", "loo,gtg", "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["methods"]) == {"loo", "gtg"} and len(result["peers"]) == 4
    assert json.loads((tmp_path / "value.json").read_text()) == result
    assert (tmp_path / "value-matrix.png").read_bytes()[:4] == b"\x89PNG"
