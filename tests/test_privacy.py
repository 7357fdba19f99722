"""DP-SGD (node/learning/private_sgd.py, docs/PRIVACY.md): the ε a node reports is Opacus' own for the
same noise, sample rate and steps; a target ε gives Opacus' noise; a node past its budget stops
publishing; options DP-SGD does not cover are one-line errors; the daemon's status shows ε. The
synthetic exchange's noisy moments (node/learning/generator.py): their ε is the Gaussian mechanism's,
their error shrinks with σ, and a network of them still learns."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

import numpy as np
from sklearn.datasets import load_digits

from manymodels.node.learning.generator import GaussianClassGenerator, fit_generator, moments_noise, moments_spent
from manymodels.node.learning.privacy import Privacy
from manymodels.node.learning.recipe import LearnerRecipe
from manymodels.node.runtime.control import request
from manymodels.node.sim.simulator import SimulationConfig, run_simulation
from manymodels.node.spec import NodeSpec, SpecError
from waiting import wait_until

RECIPE = LearnerRecipe(num_partitions=8, model="logreg")


def planned_steps(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate, steps) of Poisson-sampled DP-SGD: one epoch is round(1/q) steps."""
    q = batch_size / num_examples
    return q, epochs * round(1 / q)


def test_reported_epsilon_is_opacus_rdp_for_the_same_noise_rate_and_steps():
    learner = replace(RECIPE, dp_noise=1.1, dp_delta=1e-5).build()[0]
    shapes = [w.shape for w in learner.get_weights()]
    for _ in range(3):
        metrics = learner.fit(1)
    q, steps = planned_steps(learner.num_examples, 32, 3)
    orders = RDPAccountant.DEFAULT_ALPHAS
    expected, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=q, noise_multiplier=1.1, steps=steps,
                                                                   orders=orders), delta=1e-5)
    assert metrics["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert metrics["dp_steps"] == steps and metrics["noise_multiplier"] == 1.1
    # the module is not renamed or reshaped by Opacus' wrapper: weights go in and out as before,
    # and a merge (set_weights) keeps the accountant
    learner.set_weights(learner.get_weights())
    assert [w.shape for w in learner.get_weights()] == shapes
    after = learner.fit(1)["epsilon"]
    _, steps = planned_steps(learner.num_examples, 32, 4)
    assert after == pytest.approx(get_privacy_spent(orders=orders, rdp=compute_rdp(
        q=q, noise_multiplier=1.1, steps=steps, orders=orders), delta=1e-5)[0], rel=1e-9)


def test_a_target_epsilon_takes_opacus_noise_for_the_planned_steps_and_keeps_within_it():
    learner = replace(RECIPE, dp_epsilon=3.0, dp_epochs=10).build()[0]
    q, steps = planned_steps(learner.num_examples, 32, 10)
    sigma = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=q, steps=steps, accountant="rdp")
    assert learner.private.noise == sigma > 0
    spent = learner.fit(10)["epsilon"]
    assert 2.8 < spent <= 3.0  # Opacus' search stops within 0.01 of the target


@pytest.mark.slow
def test_a_node_past_its_budget_stops_publishing_and_the_report_says_when():
    report = run_simulation(SimulationConfig(nodes=3, rounds=5, model="logreg", dp_noise=1.0, dp_epsilon=4.5))
    assert "dp_epsilon" in report["config"] and "privacy" in report["nodes"][0]
    stopped = 0
    for node in report["nodes"]:
        p, sent = node["privacy"], [sum(b.values()) for b in node["bytes_sent_per_round"]]
        eps, r = p["epsilon_per_round"], p["stopped_publishing_round"]
        assert p["budget"] == 4.5 and p["noise_multiplier"] == 1.0 and len(eps) == 5
        assert eps == sorted(eps)
        if r is None:
            assert eps[-1] <= 4.5 and all(sent)
            continue
        stopped += 1
        assert eps[r - 1] > 4.5 >= (eps[r - 2] if r > 1 else 0)
        assert all(sent[:r - 1]) and not any(sent[r - 1:])  # nothing more from the round it crossed
    assert stopped >= 1


@pytest.mark.slow
def test_dp_training_on_digits_at_epsilon_8_still_beats_training_alone():
    report = run_simulation(SimulationConfig(nodes=8, rounds=10, model="logreg", dp_epsilon=8.0))
    s = report["summary"]
    assert max(n["privacy"]["epsilon_per_round"][-1] for n in report["nodes"]) <= 8.0
    assert s["mean_accuracy"] > s["mean_local_only_accuracy"] + 0.1, s


@pytest.mark.parametrize("options, words", [
    ({"model": "forest"}, "the forest model has none"),
    ({"client_app": "app:client"}, "--client-app"),
    ({"dp_clip": 0.0}, "--dp-clip above 0"),
    ({"dp_noise": 0.0, "dp_epsilon": 3.0}, "give --dp-epochs"),
])
def test_dp_options_that_cannot_run_are_one_line(options, words):
    recipe_fields = {k: v for k, v in {"dp_noise": 1.0, **options}.items() if k != "exchange"}
    with pytest.raises(SpecError, match=words) as error:
        NodeSpec.parse(replace(RECIPE, **recipe_fields), exchange=options.get("exchange", "weights"))
    assert "\n" not in str(error.value)


def test_dp_options_name_the_extra_without_opacus(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # what find_spec sees of a package that is not there
    with pytest.raises(SpecError, match=r"pip install 'manymodels\[dp\]'"):
        NodeSpec.parse(replace(RECIPE, dp_noise=1.0))


def test_a_mixed_simulation_with_a_forest_refuses_dp(cli):
    out = cli("simulate", "--model", "mixed", "--dp-noise", "1", "--rounds", "1")
    assert out.returncode != 0 and "forest" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def dp_status(home: Path, what: str, until) -> dict:
    return wait_until(lambda: request(home / "control.sock", "status"), what, 60, until=until)


@pytest.mark.slow
def test_node_status_shows_the_epsilon_spent_and_a_restart_counts_it_on(tmp_path, cli):
    home = tmp_path / "home"
    start = ("node", "start", "--home", home, "--detach", "--wait")
    out = cli(*start, "--model", "logreg", "--num-partitions", "8", "--period", "1", "--dp-noise", "1.0",
              "--dp-epsilon", "50", timeout=180)
    assert out.returncode == 0, out.stderr
    try:
        p = dp_status(home, "two DP-SGD cycles", lambda s: s["version"] >= 2 and s["privacy"]["epsilon"])["privacy"]
        assert p["budget"] == 50 and p["noise_multiplier"] == 1.0 and p["publishing"] and 0 < p["epsilon"] < 50
        line = cli("node", "status", "--home", home).stdout
        assert "DP-SGD: epsilon" in line and "of a budget of 50 at delta 1e-05" in line
        cli("node", "stop", "--home", home)
        assert cli(*start, timeout=180).returncode == 0  # the saved config: DP on, its steps in state.json
        # one cycle after the restart has spent more than the two before it: the saved steps count
        after = dp_status(home, "a DP-SGD cycle after the restart", lambda s: s["privacy"]["epsilon"])["privacy"]
        assert after["epsilon"] > p["epsilon"]
    finally:
        cli("node", "stop", "--home", home)


# --- the synthetic exchange's noisy moments ------------------------------------------------------


def test_noisy_moments_spend_one_gaussian_mechanism_of_sigma_over_root_3():
    expected, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=compute_rdp(
        q=1.0, noise_multiplier=2.0 / 3 ** 0.5, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS), delta=1e-5)
    assert moments_spent(Privacy(noise=2.0))["epsilon"] == pytest.approx(expected, rel=1e-9)
    for target in (1.0, 3.0, 8.0):  # a target ε: the smallest σ that keeps within it
        spent = moments_spent(Privacy(epsilon=target))
        assert target * 0.98 <= spent["epsilon"] <= target and spent["noise_multiplier"] == moments_noise(
            Privacy(epsilon=target))


def test_noisy_moments_err_less_with_less_noise_and_differ_every_fit():
    x, y = load_digits(return_X_y=True)
    x, y = x[:300].astype(np.float32), y[:300]
    exact = GaussianClassGenerator(x, y, (0.0, 16.0))
    errors = {}
    for sigma in (0.05, 0.5, 5.0):
        fits = [fit_generator(x, y, (0.0, 16.0), 10, Privacy(noise=sigma)) for _ in range(2)]
        assert not np.array_equal(fits[0].mean, fits[1].mean)  # the operating system's noise, not a seed
        errors[sigma] = np.abs(fits[0].mean - exact.mean[fits[0].classes]).mean() if len(fits[0].classes) else 16
    assert errors[0.05] < 0.2 < errors[0.5] < errors[5.0]
    samples, labels = fit_generator(x, y, (0.0, 16.0), 10, Privacy(noise=1.0)).sample(5, np.random.default_rng(0))
    assert samples.min() >= 0 and samples.max() <= 16 and set(labels) <= set(range(10))


@pytest.mark.slow
def test_synthetic_exchange_with_noisy_moments_at_epsilon_8_beats_training_alone():
    report = run_simulation(SimulationConfig(nodes=6, rounds=8, exchange="synthetic", model="logreg", dp_epsilon=8.0))
    s, privacy = report["summary"], report["nodes"][0]["privacy"]
    assert s["mean_accuracy"] >= s["mean_local_only_accuracy"] + 0.2, s
    assert privacy["epsilon_per_round"] == [privacy["epsilon_per_round"][0]] * 8  # one release, from the start
    assert 7.8 <= privacy["epsilon_per_round"][0] <= 8.0 and privacy["stopped_publishing_round"] is None
