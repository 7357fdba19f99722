"""manymodels.aggregation: closed-form answers, agreement with Flower's kernels, input safety, messages."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from flwr.server.strategy import aggregate as flower

from manymodels.aggregation import RuleError, check_inputs, get_rule, list_rules
from manymodels.aggregation.weights import _sq_distances, krum_scores

WEIGHT_SPECS = ["fedavg", "median", "trimmed:0.2", "krum:1", "multikrum:1:3", "bulyan:1", "gossip:0.3", "clippedgossip:0.5"]


def scalars(*values: float, weights=None) -> list:
    """One single-tensor update per value."""
    weights = weights or [1] * len(values)
    return [([np.array([v], dtype=np.float64)], w) for v, w in zip(values, weights)]


def value(out) -> float:
    assert len(out) == 1 and out[0].shape == (1,)
    return float(out[0][0])


def random_results(n: int, seed: int) -> list:
    """n updates of a (4, 3) matrix and a (3,) bias, float32, with integer weights."""
    rng = np.random.default_rng(seed)
    return [
        (
            [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)],
            int(rng.integers(1, 50)),
        )
        for _ in range(n)
    ]


def assert_close(ours, theirs, rtol=1e-5, atol=1e-6) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# --- closed forms ---------------------------------------------------------------------------------


def test_fedavg_weighted_mean():
    assert value(get_rule("fedavg")(scalars(1, 3, weights=[1, 3]))) == 2.5


def test_median_odd_and_even():
    assert value(get_rule("median")(scalars(1, 2, 100))) == 2
    assert value(get_rule("median")(scalars(1, 2, 3, 100))) == 2.5


def test_trimmed_cuts_the_outlier():
    # n = 6, int(0.2 * 6) = 1 cut at each end: mean of 2, 3, 4, 5.
    assert value(get_rule("trimmed:0.2")(scalars(1, 2, 3, 4, 5, 1000))) == 3.5
    assert value(get_rule("trimmed:0")(scalars(1, 2, 3, 4, 5, 1000))) == pytest.approx(1015 / 6)


def test_krum_scores_and_choice():
    results = scalars(0, 1, 2.5, 4, 100)
    # f = 1, n = 5: each score sums the squared distances to the n - f - 2 = 2 nearest others.
    expected = [1 + 6.25, 1 + 2.25, 2.25 + 2.25, 2.25 + 9, 96**2 + 97.5**2]
    np.testing.assert_allclose(krum_scores([u for u, _ in results], f=1), expected)
    assert value(get_rule("krum:1")(results)) == 1


def test_multikrum_averages_the_best_by_weight():
    results = scalars(0, 1, 2.5, 4, 100, weights=[5, 1, 3, 5, 5])
    # The two best scores are 1 (weight 1) and 2.5 (weight 3).
    assert value(get_rule("multikrum:1:2")(results)) == pytest.approx((1 * 1 + 2.5 * 3) / 4)


def test_bulyan_excludes_the_outlier():
    # n = 7, f = 1: Krum selects 5 honest updates (3, 4, 2, 5, 1), their median is 3 and the mean of
    # the beta = 3 values closest to it (2, 3, 4) is 3.
    assert value(get_rule("bulyan:1")(scalars(1, 2, 3, 4, 5, 6, 1000))) == 3


def test_gossip_mixes_reference_with_neighbour_mean():
    reference = [np.array([0.0])]
    results = [(reference, 1), *scalars(2, 4, weights=[7, 1])]  # neighbour weights are ignored
    assert value(get_rule("gossip:0.5")(results, reference=reference)) == 1.5
    assert value(get_rule("gossip:0.25")(results, reference=reference)) == 0.75
    # With no neighbours there is nothing to mix in.
    assert value(get_rule("gossip")([(reference, 1)], reference=reference)) == 0


def test_clippedgossip_clips_a_far_neighbour_to_tau():
    reference = [np.zeros(2)]
    far = [np.array([30.0, 40.0])]  # ||far - x|| = 50
    out = get_rule("clippedgossip:1.0")([(reference, 1), (far, 1)], reference=reference)
    # x + (1/2) * clip(far - x, 1): the clipped difference has norm tau exactly, along (0.6, 0.8).
    np.testing.assert_allclose(out[0] * 2, [0.6, 0.8])
    assert np.linalg.norm(out[0] * 2) == pytest.approx(1.0)
    near = [np.array([0.3, 0.4])]  # norm 0.5 < tau: passes unclipped
    out = get_rule("clippedgossip:1.0")([(reference, 1), (near, 1), (far, 1)], reference=reference)
    np.testing.assert_allclose(out[0], (np.array([0.3, 0.4]) + [0.6, 0.8]) / 3)


def test_clippedgossip_with_a_nonzero_reference():
    reference = [np.array([1.0, 1.0])]
    other = [np.array([4.0, 5.0])]  # difference (3, 4), norm 5
    out = get_rule("clippedgossip:2.5")([(reference, 1), (other, 1)], reference=reference)
    np.testing.assert_allclose(out[0], np.array([1.0, 1.0]) + 0.5 * np.array([1.5, 2.0]))


def test_logit_rules():
    logits = [np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[3.0, 0.0], [3.0, 4.0]]), np.array([[8.0, 1.0], [0.0, 4.0]])]
    np.testing.assert_allclose(get_rule("logit-mean")(logits), [[4.0, 1.0], [2.0, 4.0]])
    np.testing.assert_allclose(get_rule("logit-median")(logits), [[3.0, 1.0], [3.0, 4.0]])
    np.testing.assert_allclose(get_rule("logit-trimmed:0.34")(logits), [[3.0, 1.0], [3.0, 4.0]])
    np.testing.assert_allclose(get_rule("logit-trimmed:0")(logits), get_rule("logit-mean")(logits))
    # log of the mean probability: log((e^1 + e^3 + e^8) / 3) in the first cell
    np.testing.assert_allclose(get_rule("logit-probmean")(logits)[0, 0], np.log((np.e + np.e**3 + np.e**8) / 3))
    # an unsure model (equal logits) counts less than a sure one: weights 1/2 and sigmoid(4)
    sure, unsure = np.array([[4.0, 0.0]]), np.array([[0.0, 0.0]])
    w = 1 / (1 + np.exp(-4.0))
    np.testing.assert_allclose(get_rule("logit-confidence")([sure, unsure]), [[4 * w / (w + 0.5), 0.0]])


def test_multi_tensor_fedavg_by_hand():
    a = ([np.ones((2, 3), np.float32), np.full(3, 2.0, np.float32)], 1)
    b = ([np.full((2, 3), 5.0, np.float32), np.zeros(3, np.float32)], 3)
    out = get_rule("fedavg")([a, b])
    np.testing.assert_allclose(out[0], np.full((2, 3), 4.0))
    np.testing.assert_allclose(out[1], np.full(3, 0.5))


@pytest.mark.parametrize("spec", WEIGHT_SPECS)
def test_every_weight_rule_keeps_shapes_and_float_dtype(spec):
    results = random_results(7, seed=1)
    out = get_rule(spec)(results, reference=results[0][0])
    assert [(a.shape, a.dtype) for a in out] == [((4, 3), np.float32), ((3,), np.float32)]


def test_integer_tensors_average_to_float64():
    out = get_rule("fedavg")([([np.array([1, 2])], 1), ([np.array([2, 4])], 1)])
    assert out[0].dtype == np.float64 and out[0].tolist() == [1.5, 3.0]


# --- agreement with Flower's kernels --------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_flower(seed):
    results = random_results(9, seed)
    assert_close(get_rule("fedavg")(results), flower.aggregate(results))
    assert_close(get_rule("median")(results), flower.aggregate_median(results))
    assert_close(get_rule("trimmed:0.2")(results), flower.aggregate_trimmed_avg(results, 0.2))
    assert_close(get_rule("krum:2")(results), flower.aggregate_krum(results, num_malicious=2, to_keep=0))
    assert_close(get_rule("multikrum:2:4")(results), flower.aggregate_krum(results, num_malicious=2, to_keep=4))
    assert_close(
        get_rule("bulyan:1")(results),
        flower.aggregate_bulyan(list(results), num_malicious=1, aggregation_rule=flower.aggregate_krum, to_keep=0),
    )
    np.testing.assert_allclose(_sq_distances([u for u, _ in results]), flower._compute_distances([u for u, _ in results]), rtol=1e-5)


def test_median_of_an_even_count_matches_flower_exactly():
    results = random_results(6, seed=7)
    for ours, theirs in zip(get_rule("median")(results), flower.aggregate_median(results)):
        np.testing.assert_array_equal(ours, theirs)


# --- inputs are never touched ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", WEIGHT_SPECS)
def test_inputs_are_not_mutated_or_aliased(spec):
    results = random_results(7, seed=3)
    for update, _ in results:
        for a in update:
            a.flags.writeable = False  # received arrays are read-only buffers
    reference = [a.copy() for a in results[0][0]]
    before, reference_before = copy.deepcopy(results), copy.deepcopy(reference)
    out = get_rule(spec)(results, reference=reference)
    assert len(results) == len(before)
    for (update, weight), (update0, weight0) in zip(results, before):
        assert weight == weight0
        for a, a0 in zip(update, update0):
            np.testing.assert_array_equal(a, a0)
    for a, a0 in zip(reference, reference_before):
        np.testing.assert_array_equal(a, a0)
    inputs = [a for update, _ in results for a in update] + reference
    assert not any(np.shares_memory(o, a) for o in out for a in inputs)


@pytest.mark.parametrize("spec", ["logit-mean", "logit-median", "logit-trimmed:0.2", "logit-probmean",
                                  "logit-confidence"])
def test_logit_inputs_are_not_mutated(spec):
    logits = [np.random.default_rng(i).standard_normal((5, 3)) for i in range(3)]
    before = copy.deepcopy(logits)
    out = get_rule(spec)(logits)
    assert all(np.array_equal(a, b) for a, b in zip(logits, before))
    assert not any(np.shares_memory(out, a) for a in logits)


# --- specs, registry, messages --------------------------------------------------------------------


def test_spec_parsing_and_canonical_form():
    rule = get_rule(" multikrum:2:5 ")
    assert (rule.name, rule.kind, rule.params, rule.spec) == ("multikrum", "weights", {"f": 2, "m": 5}, "multikrum:2:5")
    assert get_rule("trimmed:0.20").spec == "trimmed:0.2"
    assert get_rule("gossip").params == {"alpha": 0.5} and get_rule("gossip").spec == "gossip:0.5"
    assert get_rule("gossip").needs_reference and not get_rule("fedavg").needs_reference
    assert get_rule("logit-mean").kind == "logits"
    assert get_rule("bulyan:2").min_inputs == 11
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_rule("fedavg").name = "median"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("xyz", "unknown rule 'xyz'; available: fedavg, median, trimmed, krum, multikrum, bulyan, gossip"),
        ("trimmed", "rule 'trimmed' lacks parameter beta; trimmed takes one parameter beta (float in [0, 0.5)): trimmed:0.2"),
        ("trimmed:0.5", "beta=0.5 is not in [0, 0.5)"),
        ("trimmed:-0.1", "beta=-0.1 is not in [0, 0.5)"),
        ("trimmed:abc", "beta='abc' is not float"),
        ("krum:1.5", "f='1.5' is not int; krum takes one parameter f (int >= 0): krum:1"),
        ("krum:-1", "f=-1 is not >= 0"),
        ("multikrum:1", "lacks parameter m; multikrum takes two parameters f (int >= 0) and m (int >= 1): multikrum:1:3"),
        ("multikrum:1:0", "m=0 is not >= 1"),
        ("fedavg:1", "rule 'fedavg:1' has too many parameters; fedavg takes no parameters: fedavg"),
        ("gossip:1.5", "alpha=1.5 is not in [0, 1]"),
        ("gossip:nan", "alpha=nan is not in [0, 1]"),
        ("clippedgossip:0", "tau=0.0 is not > 0"),
        ("clippedgossip:inf", "tau=inf is not > 0"),
    ],
)
def test_spec_errors_are_clear(spec, message):
    with pytest.raises(RuleError) as error:
        get_rule(spec)
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize(
    "spec, n, reason",
    [
        ("fedavg", 1, None),
        ("fedavg", 0, "fedavg got no inputs to aggregate"),
        ("trimmed:0.4", 1, None),
        ("krum:1", 5, None),
        ("krum:1", 4, "krum:1 needs n >= 2f+3 = 5 inputs, got n=4"),
        ("multikrum:1:6", 5, "multikrum:1:6 needs n >= max(2f+3, m) = 6 inputs, got n=5"),
        ("bulyan:1", 7, None),
        ("bulyan:1", 6, "bulyan:1 needs n >= 4f+3 = 7 inputs, got n=6"),
        ("gossip", 1, None),
    ],
)
def test_check_inputs(spec, n, reason):
    assert check_inputs(spec, n) == reason
    assert check_inputs(get_rule(spec), n) == reason


def test_too_few_inputs_raise_the_check_inputs_reason():
    with pytest.raises(RuleError, match=r"bulyan:1 needs n >= 4f\+3 = 7 inputs, got n=6"):
        get_rule("bulyan:1")(scalars(1, 2, 3, 4, 5, 6))
    with pytest.raises(RuleError, match="krum:1 needs n >= 2f"):
        get_rule("krum:1")(scalars(1, 2, 3, 4))


@pytest.mark.parametrize(
    "spec, results, kwargs, message",
    [
        ("fedavg", [], {}, "fedavg got no inputs"),
        ("fedavg", scalars(1, 2, weights=[0, 0]), {}, "weights of the updates to average sum to 0"),
        ("fedavg", scalars(1, 2, weights=[1, -1]), {}, "update 1 has weight -1; weights must be finite and >= 0"),
        ("fedavg", scalars(1, 2, weights=[1, float("nan")]), {}, "weights must be finite"),
        ("median", [([np.zeros(2)], 1), ([np.zeros(3)], 1)], {}, "update 1 has tensors"),
        ("median", [([np.zeros(2)], 1), ([np.zeros(2, np.float32)], 1)], {}, "update 1 has tensors"),
        ("median", [([np.zeros(2)], 1), ([np.zeros(2), np.zeros(1)], 1)], {}, "update 1 has tensors"),
        ("median", [([[1.0, 2.0]], 1)], {}, "update 0 must be a list of real-valued numpy arrays"),
        ("gossip", scalars(1, 2), {}, "gossip:0.5 needs the node's own weights as reference="),
        ("fedavg", scalars(1, 2), {"reference": [np.zeros(3)]}, "reference has tensors"),
    ],
)
def test_bad_weight_inputs_are_rule_errors(spec, results, kwargs, message):
    with pytest.raises(RuleError) as error:
        get_rule(spec)(results, **kwargs)
    assert message in str(error.value)


def test_bad_logit_inputs_are_rule_errors():
    with pytest.raises(RuleError, match="logit matrix must be a 2-d numpy array of shape"):
        get_rule("logit-mean")([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(RuleError, match="logit matrix must be a 2-d"):
        get_rule("logit-median")([np.zeros(3)])
    with pytest.raises(RuleError, match="takes no reference"):
        get_rule("logit-mean")([np.zeros((2, 3))], reference=[np.zeros((2, 3))])
    with pytest.raises(RuleError, match="no inputs"):
        get_rule("logit-mean")([])


def test_list_rules_describes_the_builtins():
    rows = {row["name"]: row for row in list_rules()}
    assert {"fedavg", "median", "trimmed", "krum", "multikrum", "bulyan", "gossip", "clippedgossip", "logit-mean", "logit-median"} <= set(rows)
    assert rows["trimmed"] == {
        "name": "trimmed",
        "kind": "weights",
        "params": [{"name": "beta", "type": "float", "domain": "in [0, 0.5)", "default": None}],
        "description": rows["trimmed"]["description"],
        "needs_reference": False,
        "source": "builtin",
        "error": None,
    }
    assert rows["gossip"]["params"][0]["default"] == 0.5
    assert rows["logit-median"]["kind"] == "logits"
    assert all(row["description"] for row in rows.values())
    json.dumps(list_rules())


def test_importing_the_rules_does_not_import_flower():
    code = "import sys, manymodels.aggregation; assert 'flwr' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_after_bans_lowers_f_by_the_peers_already_cut_off():
    from manymodels.aggregation import after_bans

    assert after_bans(get_rule("bulyan:2"), 1).spec == "bulyan:1"
    assert after_bans(get_rule("bulyan:2"), 5).min_inputs == 3  # f never below 0
    assert after_bans(get_rule("multikrum:2:7"), 2).spec == "multikrum:0:7"
    assert after_bans(get_rule("trimmed:0.2"), 3).spec == "trimmed:0.2"  # no f: unchanged
    assert after_bans(get_rule("krum:1"), 0).spec == "krum:1"
