"""Data value (studies/value.py, studies/value_study.py): the analysis on games with known answers,
then on simulated networks, against exact Shapley and with planted peers whose worth is known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from manymodels.studies.value import (exact_shapley, leave_one_out, monte_carlo_shapley, peer_totals,
                                      spearman)


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


def test_truncation_skips_what_cannot_matter():
    game = lambda i, s: min(len(s), 1)  # noqa: E731  the first peer brings everything
    mc = monte_carlo_shapley(game, 4, range(4), permutations=50, tolerance=0.01)
    assert mc.truncated == pytest.approx(2 / 3)  # of three peers per model, only the first is measured
    assert np.allclose(np.nansum(mc.values, axis=0), 1)


def test_spearman_and_totals():
    a = np.array([[np.nan, 1, 2], [3, np.nan, 5], [6, 7, np.nan]])
    assert spearman(a, a * 2 + 1) == pytest.approx(1)
    assert spearman(a, -a) == pytest.approx(-1)
    assert math.isnan(spearman(a, np.ones_like(a)))
    assert peer_totals(a).tolist() == [3, 8, 13]
