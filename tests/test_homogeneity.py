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


TINY = ("--widths", "4,32", "--seeds", "2", "--resamples", "1", "--exchanges", "weights,distill", "--nodes", "2",
        "--rounds", "2", "--local-epochs", "2", "--max-train", "160", "--probe-size", "40")


@pytest.mark.slow
def test_study_homogeneity_from_the_console_script_resumes_what_it_has(cli, tmp_path):
    """A whole run, then the same study interrupted after its first point (the results file holds only
    that): the rerun trains the other points only, and the numbers are the same."""
    import json

    first = cli("study", "homogeneity", *TINY, "--json", "--out", "full")
    assert first.returncode == 0, first.stderr
    whole = json.loads(first.stdout)
    assert whole["grid"] == {**whole["grid"], "points": 4, "run": 4, "resumed": 0}
    assert list(whole["curves"]) == ["alone", "weights", "distill", "pooled"]
    assert whole["curves"]["weights"]["within_run_disagreement"] == [0, 0]  # one model after the last fold
    assert json.loads((tmp_path / "full" / "homogeneity.json").read_text()) == whole
    for png in ("homogeneity-curves.png", "homogeneity-disagreement.png"):
        assert (tmp_path / "full" / png).read_bytes()[:4] == b"\x89PNG"

    runs = json.loads((tmp_path / "full" / "homogeneity-runs.json").read_text())
    assert len(runs["points"]) == 4
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "homogeneity-runs.json").write_text(json.dumps({**runs, "points": runs["points"][:1]}))
    again = cli("study", "homogeneity", *TINY, "--json", "--out", "cut")
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout)
    assert resumed["grid"] == {**resumed["grid"], "points": 4, "run": 3, "resumed": 1}
    assert {k: v for k, v in resumed.items() if k != "grid"} == {k: v for k, v in whole.items() if k != "grid"}

    other = cli("study", "homogeneity", *TINY, "--label-noise", "0.1", "--out", "full")
    assert other.returncode == 2 and "other settings" in other.stderr


def test_study_homogeneity_says_what_is_wrong_in_one_line(cli):
    for args, message in ((("--widths", "4,x"), "--widths takes whole numbers"),
                          (("--label-noise", "1.5"), "--label-noise is a fraction")):
        out = cli("study", "homogeneity", *args, timeout=60)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr


def test_settings_that_cannot_make_a_study_are_refused():
    from manymodels.node.sim.spec import SimulationConfig
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
