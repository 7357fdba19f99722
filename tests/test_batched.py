"""Batched training (node/learning/batched.py) against training one by one, the simulator with and
without it, and the protocol-only mode (node/sim/protocol_only.py)."""
from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from manymodels.node.learning import batched as batching
from manymodels.node.learning.batched import accuracies, evaluation, fit_all, group_key
from manymodels.node.learning.datasets import load_dataset
from manymodels.node.learning.learner import Samples
from manymodels.node.learning.recipe import make_learner
from manymodels.node.learning.training import Training
from manymodels.node.sim.simulator import run_simulation
from manymodels.node.sim.spec import SimulationConfig
from manymodels.node.spec import SpecError

# Ragged on purpose: 1, 2 and 4 batches of 32 per epoch, last batches 1 to 32 wide, one size alone.
SIZES = (33, 40, 50, 64, 37, 100, 120, 97, 7)
TRAININGS = {
    "adam": Training(),
    "adam-decay": Training(weight_decay=1e-3, batch_size=16),
    "sgd-momentum-decay": Training(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd": Training(optimizer="sgd", lr=0.05),
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _learners(data, arch, training):
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate(SIZES):
        idx = rng.choice(len(data.y_train), n, replace=False)
        out.append(make_learner(arch, data.x_train[idx], data.y_train[idx], data, init_seed=0, seed=i,
                                training=training))
    return out


@pytest.mark.parametrize("arch", ["logreg", "mlp"])
@pytest.mark.parametrize("training", TRAININGS, ids=str)
def test_batched_training_equals_one_by_one(digits, one_torch_thread, arch, training):
    batched = _learners(digits, arch, TRAININGS[training])
    alone = copy.deepcopy(batched)
    extra = Samples(digits.x_train[:20], digits.y_train[:20], 0.5)
    for r in range(3):
        fit_all(batched, 2)
        for one in alone:
            one.fit(2)
        if r == 0:  # a fold between rounds, and a learner that trains alone on peers' samples once
            weights = batched[0].get_weights()
            for learners in (batched, alone):
                learners[1].set_weights(weights)
                learners[2].fit(1, extra)
    for b, a in zip(batched, alone):
        for x, y in zip(b.get_weights(), a.get_weights()):
            np.testing.assert_array_equal(x, y)  # equal in every bit here (the golden reports rely on it)
    assert accuracies(batched, digits.x_test, digits.y_test) == [
        one.evaluate(digits.x_test, digits.y_test)["accuracy"] for one in alone]


@pytest.mark.parametrize("snapshot", [1 << 26, 0], ids=["copied", "too-big-to-copy"])
def test_an_evaluation_made_later_sees_the_models_as_they_were(digits, one_torch_thread, monkeypatch, snapshot):
    monkeypatch.setattr(batching, "_SNAPSHOT_ELEMENTS", snapshot)
    learners = [*_learners(digits, "logreg", Training()), make_learner("cnn", digits.x_train[:40], digits.y_train[:40],
                                                                       digits, init_seed=0, seed=0)]
    fit_all(learners, 2)
    expected = [one.evaluate(digits.x_test, digits.y_test)["accuracy"] for one in learners]
    later = evaluation(learners, digits.x_test, digits.y_test)
    for one in learners:  # changed before the evaluation runs, as the next round's training does
        one.set_weights([np.zeros_like(t) for t in one.get_weights()])
    with ThreadPoolExecutor(1) as aside:
        assert aside.submit(later).result() == expected
    assert accuracies(learners, digits.x_test, digits.y_test) != expected  # the change did change them


def test_what_trains_alone(digits):
    logreg, = _learners(digits, "logreg", Training())[:1]
    assert group_key(logreg) is not None
    cnn = make_learner("cnn", digits.x_train[:40], digits.y_train[:40], digits, init_seed=0, seed=0)
    assert group_key(cnn) is None  # not Linear/ReLU layers
    logreg.optimizer = torch.optim.Adam(logreg.module.parameters(), amsgrad=True)
    assert group_key(logreg) is None  # not torch's plain Adam step


def test_dp_sgd_learners_train_alone(digits):
    pytest.importorskip("opacus")
    from manymodels.node.learning.privacy import Privacy

    private = make_learner("logreg", digits.x_train[:64], digits.y_train[:64], digits, init_seed=0, seed=0,
                           training=Training(privacy=Privacy(noise=1.0)))
    assert group_key(private) is None  # Opacus' per-example gradients are another computation


def test_a_batched_learner_keeps_its_own_tensors(digits):
    learners = _learners(digits, "logreg", Training())[:4]
    fit_all(learners, 1)
    one = learners[1]
    tensors = [*one.module.parameters(), *(t for s in one.optimizer.state.values() for t in s.values()), one.x]
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in tensors)


def _report(**options):
    report = run_simulation(SimulationConfig(**options))
    del report["summary"]["wall_seconds"]
    report["config"].pop("batched", None)
    return report


@pytest.mark.slow
def test_simulation_report_is_the_same_with_and_without_batching():
    options = dict(nodes=6, rounds=3, model="logreg,mlp", hidden=(16,), optimizer="sgd", lr=0.05, momentum=0.9,
                   topology="ring", attacks=("signflip:0.2",), rule="median")
    assert json.dumps(_report(**options)) == json.dumps(_report(batched=False, **options))


@pytest.mark.parametrize("options", [
    dict(rule="fedavg", attacks=("signflip:0.25",), reputation=0.7, loss=0.1),  # bans mid-fold, some inputs lost
    dict(rule="gossip:0.3", compress="topk:0.2", attacks=("gaussian:0.2",)),  # sparse weights, bases kept per sender
], ids=["fedavg-bans", "gossip-topk"])
def test_batched_folds_are_each_nodes_own_fold(options):
    """The simulator folds the nodes of a linear built-in rule together (node/sim/batching.py): the
    same reports, reputations and bans included, as each node folding alone."""
    options = dict(nodes=12, rounds=3, model="logreg,mlp", hidden=(16,), topology="random:4", **options)
    report = _report(**options)
    assert json.dumps(report) == json.dumps(_report(batched=False, **options))
    if options.get("reputation"):
        assert any(n["banned"] for n in report["nodes"] if not n["attack"])


@pytest.mark.slow
def test_protocol_only_counts_add_up():
    report = run_simulation(SimulationConfig(nodes=200, rounds=3, model="logreg", topology="random:3",
                                             protocol_only=True, attacks=("forged:0.1",), loss=0.05))
    s, nodes = report["summary"], report["nodes"]
    assert s["messages_sent"] == 3 * sum(n["neighbours"] for n in nodes)  # one message a round to each neighbour
    assert s["messages_sent"] == s["messages_verified"] + s["messages_dropped"]
    assert s["messages_verified"] == s["messages_accepted"] + s["rejected_messages"]
    assert 0 < s["messages_dropped"] < 0.1 * s["messages_sent"]
    forged_to = sum(n["neighbours"] for n in nodes if n["attack"])
    assert 0.9 * 3 * forged_to < s["rejected_messages"] <= 3 * forged_to
    assert len(s["seconds_per_round"]) == 3 and s["bytes_sent"] > 0
    # each node's message of a round is the same bytes to all its neighbours: read and verified once
    honest = sum(not n["attack"] for n in nodes)
    assert 3 * honest * 0.95 <= s["messages_distinct"] <= s["messages_verified"] / 2
    assert "mean_accuracy" not in s and not any("final_accuracy" in n or "history" in n for n in nodes)


def test_protocol_only_refuses_what_it_cannot_run():
    with pytest.raises(SpecError, match="--protocol-only cannot run with --exchange distill"):
        run_simulation(SimulationConfig(protocol_only=True, exchange="distill"))


def test_cli_protocol_only_and_one_by_one(tmp_path):
    from typer.testing import CliRunner

    from manymodels.cli.main import app

    path = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["simulate", "--protocol-only", "--nodes", "12", "--rounds", "2", "--model",
                                      "logreg", "--report", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "12 nodes, 2 rounds" in result.output and "verified 264" in " ".join(result.output.split())
    assert json.loads(path.read_text())["config"]["protocol_only"] is True
    result = CliRunner().invoke(app, ["simulate", "--one-by-one", "--nodes", "3", "--rounds", "1", "--model", "logreg",
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["batched"] is False


def test_threads_give_each_result_in_its_items_order_and_soon_what_was_asked():
    import threading

    from manymodels.node.sim.batching import Threads, threads

    items = list(range(7))
    with threads() as cores:
        assert cores.each(lambda k: k * k, items) == [k * k for k in items]
    with ThreadPoolExecutor(3) as pool, ThreadPoolExecutor(1) as aside:
        assert Threads(pool, 3).each(str, items) == list(map(str, items))
        started = threading.Event()
        result = Threads(pool, 3, aside).soon(lambda: started.set() or "done")
        assert started.wait(10) and result() == "done"  # started without waiting for the call
    assert Threads(None, 1).each(str, items[:1]) == ["0"]
    assert Threads(None, 1).soon(lambda: 42)() == 42
