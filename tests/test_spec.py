"""Specs: one check with one message for `simulate` and `node start`, and a learner recipe that builds
exactly the model and optimizer it names (and learns with them)."""
import doctest
import json

import numpy as np
import pytest
import torch

import manymodels.node.spec
from manymodels.node.learning.datasets import load_dataset
from manymodels.node.learning.recipe import LearnerRecipe, make_learner
from manymodels.node.learning.training import Training
from manymodels.node.runtime.daemon import DaemonConfig
from manymodels.node.sim.spec import SimulationConfig, SimulationSpec
from manymodels.node.spec import SpecError

# the usual FedAvg baselines' setup: MLP 64-32-10 (on digits), SGD lr 0.05 momentum 0.9, batch 32
BASELINE = Training(hidden=(32,), optimizer="sgd", lr=0.05, momentum=0.9, batch_size=32)


def test_the_module_docstring_runs():
    assert doctest.testmod(manymodels.node.spec).failed == 0


@pytest.mark.parametrize("options, message", [
    ({"reputation": 2.0}, "--reputation must be in [0, 1], got 2"),
    ({"exchange": "gradients"}, "unknown exchange 'gradients'"),
    ({"rule": "nope"}, "unknown rule 'nope'"),
    ({"rule": "logit-mean"}, "logit-mean is a logits rule; this option takes a weights rule"),
    ({"logit_rule": "median"}, "median is a weights rule; this option takes a logits rule"),
    ({"rule": "flwr:FedProx:proximal_mu=0.1"}, "the proximal term runs in a Flower client's fit"),
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; available: adam, sgd"),
    ({"momentum": 0.9}, "--momentum is SGD's"),  # with Adam
    ({"lr": 0.0}, "--lr must be a positive number"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
    ({"hidden": ()}, "--hidden takes layer sizes of at least 1"),
    ({"partition": "dirichlet:x"}, "partition"),
    ({"run_config": "lr=0.1"}, "give --client-app too"),
])
def test_simulate_and_node_start_refuse_alike(options, message):
    recipe = {k: v for k, v in options.items() if k in LearnerRecipe.__dataclass_fields__}
    node = {k: v for k, v in options.items() if k not in recipe}
    with pytest.raises(SpecError) as simulated:
        SimulationSpec.parse(SimulationConfig(**options))
    with pytest.raises(SpecError) as started:
        DaemonConfig(recipe=LearnerRecipe(**recipe), **node).node_spec()
    assert message in str(simulated.value)
    assert str(simulated.value) == str(started.value)


@pytest.mark.parametrize("config, message", [
    (SimulationConfig(loss=1.5), "--loss is the probability that a message is lost, in [0, 1]; got 1.5"),
    (SimulationConfig(nodes=0), "--nodes, --rounds and --local-epochs must be at least 1"),
    (SimulationConfig(model="mlp,rnn"), "unknown model 'rnn'"),
    (SimulationConfig(attacks=("signflip:0.5", "gaussian:0.5")), "leave no honest node"),
])
def test_simulation_only_checks(config, message):
    with pytest.raises(SpecError) as refused:
        SimulationSpec.parse(config)
    assert message in str(refused.value)


@pytest.mark.parametrize("config, message", [
    (DaemonConfig(period=-1), "--period must be at least 0.5 s"),
    (DaemonConfig(period=0), "got 0"),
    (DaemonConfig(period=0.01), "got 0.01"),
    (DaemonConfig(push_limit=-1), "--push-limit must be at least 0"),
    (DaemonConfig(recipe=LearnerRecipe(partition_id=3, num_partitions=3)), "--partition-id must be in 0..2"),
    (DaemonConfig(recipe=LearnerRecipe(client_app="app.py:app"), exchange="distill"), "--exchange weights"),
])
def test_daemon_only_checks(config, message):
    with pytest.raises(SpecError) as refused:
        config.node_spec()
    assert message in str(refused.value)


def test_a_spec_holds_resolved_rules():
    spec = SimulationSpec.parse(SimulationConfig(rule="trimmed:0.2", nodes=4, attacks=("signflip:0.25",)))
    assert spec.node.rule.spec == "trimmed:0.2" and spec.node.rule.kind == "weights"
    assert spec.node.logit_rule.kind == "logits"
    assert list(spec.attackers.values()) == ["signflip"] and len(spec.adjacency) == 4


def test_the_recipe_builds_that_mlp_and_optimizer_and_it_learns():
    torch.set_num_threads(1)
    data = load_dataset("digits", seed=0)
    learner = make_learner("mlp", data.x_train, data.y_train, data, init_seed=0, seed=1, training=BASELINE)
    linear = [m for m in learner.module if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 32), (32, 10)]
    assert type(learner.optimizer) is torch.optim.SGD
    group = learner.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 0.0)
    assert learner.batch_size == 32
    before = learner.evaluate(data.x_test, data.y_test)["accuracy"]
    learner.fit(5)
    after = learner.evaluate(data.x_test, data.y_test)["accuracy"]
    assert before < 0.3 and after > 0.9  # chance is 0.1; only training gets a digits MLP past 0.9


def test_the_default_recipe_is_the_reference_mlp_with_adam():
    data = load_dataset("digits", seed=0)
    learner = make_learner("mlp", data.x_train[:50], data.y_train[:50], data, init_seed=0, seed=1)
    linear = [m for m in learner.module if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 128), (128, 10)]
    assert type(learner.optimizer) is torch.optim.Adam and learner.optimizer.param_groups[0]["lr"] == 0.01


def test_without_shuffling_the_node_seed_does_not_change_training():
    data = load_dataset("digits", seed=0)
    x, y = data.x_train[:200], data.y_train[:200]

    def trained(seed, shuffle):
        learner = make_learner("mlp", x, y, data, init_seed=0, seed=seed, training=Training(shuffle=shuffle))
        learner.fit(1)
        return learner.get_weights()[0]
    assert np.array_equal(trained(1, False), trained(2, False))
    assert not np.array_equal(trained(1, True), trained(2, True))


def test_simulate_runs_the_recipe_given_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from manymodels.cli.main import app

    report = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["simulate", "--nodes", "3", "--rounds", "2", "--hidden", "64,32",
                                      "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9",
                                      "--batch-size", "16", "--report", str(report), "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads(report.read_text())["config"]
    assert (config["hidden"], config["optimizer"], config["lr"], config["momentum"], config["batch_size"]) == \
        ([64, 32], "sgd", 0.05, 0.9, 16)
    assert "weight_decay" not in config and "shuffle" not in config  # at their defaults: as reports always were


def test_a_saved_recipe_loads_with_its_training_and_an_old_one_with_the_defaults():
    config = DaemonConfig(recipe=LearnerRecipe(hidden=(64, 32), optimizer="sgd", lr=0.05, momentum=0.9))
    saved = json.loads(json.dumps(config.to_json()))
    assert DaemonConfig.from_json(saved) == config
    assert DaemonConfig.from_json(saved).recipe.training == Training(hidden=(64, 32), optimizer="sgd", lr=0.05,
                                                                     momentum=0.9)
    old = {k: v for k, v in saved["recipe"].items() if k not in ("hidden", "optimizer", "momentum",
                                                                 "weight_decay", "shuffle")}
    assert DaemonConfig.from_json({**saved, "recipe": old}).recipe.training == Training(lr=0.05)
