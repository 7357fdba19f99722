"""Homogeneity (studies/homogeneity.py, studies/homogeneity_study.py): the decomposition on constructed
cases with known answers, then the study on a small simulated grid and from the console script."""
from __future__ import annotations

import numpy as np
import pytest

from manymodels.studies.homogeneity import decompose, disagreement_matrix, log_softmax, mean_disagreement

LOSSES = ("ce", "mse")


def random_logits(shape, seed=0, scale=2.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape)


@pytest.mark.parametrize("loss", LOSSES)
def test_terms_sum_to_the_risk_and_the_variance_parts_to_the_variance(loss):
    z, y = random_logits((3, 4, 50, 5)), np.random.default_rng(1).integers(0, 5, 50)
    d = decompose(z, y, loss)
    assert abs(d.bias2 + d.variance - d.risk) < 1e-9
    assert abs(d.sampling + d.initialisation + d.interaction - d.variance) < 1e-9
    assert d.variance > 0 and d.sampling > 0 and d.initialisation > 0


def test_cross_entropy_terms_are_yang_et_al():
    """Risk is the mean cross-entropy; bias² the cross-entropy of the normalised geometric mean;
    variance the mean KL divergence from that mean to each model."""
    z, y = random_logits((2, 3, 20, 4), seed=2), np.random.default_rng(3).integers(0, 4, 20)
    log_p = log_softmax(z).reshape(6, 20, 4)
    geometric = np.exp(log_p.mean(0))
    geometric /= geometric.sum(-1, keepdims=True)
    d = decompose(z, y, "ce")
    assert np.isclose(d.risk, -log_p[:, np.arange(20), y].mean())
    assert np.isclose(d.bias2, -np.log(geometric[np.arange(20), y]).mean())
    kl = (geometric * (np.log(geometric) - log_p)).sum(-1)
    assert np.isclose(d.variance, kl.mean())


def test_squared_error_terms_are_the_classical_ones():
    z, y = random_logits((2, 3, 20, 4), seed=4), np.random.default_rng(5).integers(0, 4, 20)
    p = np.exp(log_softmax(z))
    one_hot, mean = np.eye(4)[y], p.mean((0, 1))
    d = decompose(z, y, "mse")
    assert np.isclose(d.risk, ((p - one_hot) ** 2).sum(-1).mean())
    assert np.isclose(d.bias2, ((mean - one_hot) ** 2).sum(-1).mean())
    assert np.isclose(d.variance, ((p - mean) ** 2).sum(-1).mean())
    # the ANOVA main effect of the data: the variance over draws of the seed-averaged prediction
    assert np.isclose(d.sampling, ((p.mean(0) - mean) ** 2).sum(-1).mean())


@pytest.mark.parametrize("loss", LOSSES)
def test_identical_models_have_no_variance_and_never_disagree(loss):
    one, y = random_logits((1, 1, 30, 3), seed=6), np.arange(30) % 3
    d = decompose(np.broadcast_to(one, (3, 2, 30, 3)), y, loss)
    assert abs(d.variance) < 1e-12 and abs(d.sampling) < 1e-12 and abs(d.initialisation) < 1e-12
    assert abs(d.risk - d.bias2) < 1e-12 and d.risk > 0
    labels = np.broadcast_to(one.argmax(-1).reshape(1, 30), (6, 30))
    assert mean_disagreement(labels) == 0 and not disagreement_matrix(labels).any()


@pytest.mark.parametrize("loss", LOSSES)
def test_only_seeds_vary_no_sampling_variance_and_the_reverse(loss):
    y = np.arange(40) % 4
    by_seed = np.broadcast_to(random_logits((3, 1, 40, 4), seed=7), (3, 5, 40, 4))  # same for every data draw
    d = decompose(by_seed, y, loss)
    assert abs(d.sampling) < 1e-12 and abs(d.interaction) < 1e-12 and d.initialisation > 0
    assert abs(d.initialisation - d.variance) < 1e-12
    by_data = np.broadcast_to(random_logits((1, 5, 40, 4), seed=8), (3, 5, 40, 4))
    d = decompose(by_data, y, loss)
    assert abs(d.initialisation) < 1e-12 and abs(d.interaction) < 1e-12 and abs(d.sampling - d.variance) < 1e-12


def test_additive_effects_have_no_interaction_under_squared_error():
    """Probabilities p = base + a[s] + b[d] (rows still summing to 1): a pure two-way additive grid."""
    rng = np.random.default_rng(9)
    base = np.full((10, 3), 1 / 3)
    a, b = rng.normal(scale=0.05, size=(4, 1, 10, 3)), rng.normal(scale=0.05, size=(1, 3, 10, 3))
    a -= a.mean(-1, keepdims=True)
    b -= b.mean(-1, keepdims=True)
    d = decompose(np.log(base + a + b), np.zeros(10, dtype=int), "mse")
    assert abs(d.interaction) < 1e-12
    assert np.isclose(d.initialisation, ((a - a.mean(0)) ** 2).sum(-1).mean())
    assert np.isclose(d.sampling, ((b - b.mean(1)) ** 2).sum(-1).mean())


def test_disagreement_counts_the_inputs_two_models_label_differently():
    labels = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 0, 2, 0]])
    m = disagreement_matrix(labels)
    assert m.tolist() == [[0, 0.25, 0.75], [0.25, 0, 0.5], [0.75, 0.5, 0]]
    assert np.isclose(mean_disagreement(labels), 0.5)
    assert np.isclose(mean_disagreement(labels[:1], labels[1:]), 0.5)
    assert np.isnan(mean_disagreement(labels[:1]))


def test_bad_shapes_and_losses_are_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        decompose(np.zeros((1, 1, 2, 2)), np.zeros(2, dtype=int), "hinge")
    with pytest.raises(ValueError, match="shaped"):
        decompose(np.zeros((2, 2, 2)), np.zeros(2, dtype=int))


TINY = ("--widths", "4,32", "--seeds", "2", "--resamples", "1", "--exchanges", "weights", "--nodes", "2",
        "--rounds", "2", "--local-epochs", "2", "--max-train", "160", "--probe-size", "40")


def tiny_study(results, loss="ce", on_point=None, label_noise=0.2):
    from manymodels.node.sim.spec import SimulationConfig
    from manymodels.studies.homogeneity_study import HomogeneitySettings, homogeneity_study

    config = SimulationConfig(nodes=2, rounds=2, local_epochs=2, max_train=160, probe_size=40, partition="iid",
                              label_noise=label_noise)
    settings = HomogeneitySettings(widths=(8,), seeds=2, resamples=1, exchanges=("weights", "distill"), loss=loss)
    return homogeneity_study(config, settings, results, on_point)


def without_grid(report):
    return {k: v for k, v in report.items() if k != "grid"}


@pytest.mark.slow
def test_an_interrupted_study_runs_only_the_points_it_lacks(tmp_path):
    """A whole run; then the same study cut after its first point (its results file holds only that):
    the rerun trains the other, and every number is the same; a rerun with the other loss trains
    nothing; one with other settings is refused."""
    import json

    from manymodels.node.spec import SpecError

    whole = tiny_study(tmp_path / "whole.json")
    assert whole["grid"] == {**whole["grid"], "points": 2, "run": 2, "resumed": 0}
    assert list(whole["curves"]) == ["alone", "weights", "distill", "pooled"]
    assert whole["curves"]["weights"]["within_run_disagreement"] == [0]  # one model after the last fold
    assert whole["network"]["weights"]["within_run_disagreement"] == [1]
    for curve in whole["curves"].values():
        assert np.allclose(np.add(curve["bias2"], curve["variance"]), curve["risk"], atol=1e-6)

    saved = json.loads((tmp_path / "whole.json").read_text())
    assert len(saved["points"]) == 2
    (tmp_path / "cut.json").write_text(json.dumps({**saved, "points": saved["points"][:1]}))
    progress = []
    resumed = tiny_study(tmp_path / "cut.json", on_point=lambda k, n, point: progress.append((k, n)))
    assert resumed["grid"] == {**resumed["grid"], "points": 2, "run": 1, "resumed": 1}
    assert progress == [(1, 2), (2, 2)]
    assert without_grid(resumed) == without_grid(whole)
    mse = tiny_study(tmp_path / "cut.json", loss="mse")
    assert mse["grid"]["run"] == 0 and mse["settings"]["loss"] == "mse"
    with pytest.raises(SpecError, match="other settings"):
        tiny_study(tmp_path / "cut.json", label_noise=0.1)


@pytest.mark.slow
def test_study_homogeneity_from_the_console_script(cli, tmp_path):
    import json

    out = cli("study", "homogeneity", *TINY, "--json", "--out", "here")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["widths"] == [4, 32] and result["grid"]["run"] == 4
    assert json.loads((tmp_path / "here" / "homogeneity.json").read_text()) == result
    assert len(json.loads((tmp_path / "here" / "homogeneity-runs.json").read_text())["points"]) == 4
    for png in ("homogeneity-curves.png", "homogeneity-disagreement.png"):
        assert (tmp_path / "here" / png).read_bytes()[:4] == b"\x89PNG"


def test_study_homogeneity_says_what_is_wrong_in_one_line(cli):
    out = cli("study", "homogeneity", "--widths", "4,x", timeout=60)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "--widths takes whole numbers" in lines[0], out.stderr


def test_settings_that_cannot_make_a_study_are_refused():
    from manymodels.node.sim.spec import SimulationConfig, SimulationSpec
    from manymodels.node.spec import SpecError
    from manymodels.studies.homogeneity_study import HomogeneitySettings

    config = SimulationConfig(nodes=3)
    for settings, message in ((HomogeneitySettings(widths=(4, 4)), "--widths must be distinct"),
                              (HomogeneitySettings(exchanges=("weights", "mixed")), "--exchanges"),
                              (HomogeneitySettings(loss="hinge"), "--loss must be one of ce, mse"),
                              (HomogeneitySettings(seeds=1, resamples=1), "at least 2 runs")):
        with pytest.raises(SpecError, match=message):
            settings.check(config)
    with pytest.raises(SpecError, match="at least 2"):
        HomogeneitySettings().check(SimulationConfig(nodes=1))
    with pytest.raises(SpecError, match="no --client-app, attacks"):
        HomogeneitySettings().check(SimulationConfig(nodes=3, attacks=("signflip:0.3",)))
    with pytest.raises(SpecError, match="--label-noise is a fraction"):
        SimulationSpec.parse(SimulationConfig(label_noise=1.5))


def test_the_data_seed_draws_the_data_and_the_seed_the_initialisation():
    """What the study's resamples and seeds rest on (node/sim/simulator.py): data_seed draws the training
    subsample, the label noise and the partition; seed the initial parameters."""
    from dataclasses import replace

    from manymodels.node.sim.simulator import make_world
    from manymodels.node.sim.spec import SimulationConfig, SimulationSpec

    def world(**changes):
        config = SimulationConfig(nodes=2, max_train=300, probe_size=40, label_noise=0.2)
        return make_world(SimulationSpec.parse(replace(config, **changes)))
    a, same_data, same_init = world(seed=1, data_seed=5), world(seed=2, data_seed=5), world(seed=1, data_seed=6)
    assert np.array_equal(a.data.y_train, same_data.data.y_train)
    assert all(np.array_equal(p, q) for p, q in zip(a.parts, same_data.parts))
    assert not np.array_equal(a.data.x_train, same_init.data.x_train)
    first = [w.tolist() for w in a.alone(0).get_weights()]
    assert first == [w.tolist() for w in same_init.alone(0).get_weights()]
    assert first != [w.tolist() for w in same_data.alone(0).get_weights()]
    clean = world(seed=1, data_seed=5, label_noise=0.0)
    assert np.array_equal(clean.data.x_train, a.data.x_train)
    assert np.sum(clean.data.y_train != a.data.y_train) == round(0.2 * len(a.data.y_train))
    assert np.array_equal(clean.data.y_test, a.data.y_test)  # the test set stays clean
