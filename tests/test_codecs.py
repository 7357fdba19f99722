"""Codecs (protocol/codecs.py), error feedback (node/core/feedback.py) and compressed exchanges: each
codec's round trip, convergence with error feedback, hostile coded tensors refused with their typed
reason before anything of their dense size is allocated, and a compressed simulation that still learns."""
from __future__ import annotations

import math
import re
import tracemalloc
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manymodels.node.core.exchange import WeightGossip
from manymodels.node.core.feedback import ErrorFeedback
from manymodels.node.sim.simulator import SimulationConfig, run_simulation
from manymodels.node.spec import NodeSpec, SpecError
from manymodels.node.learning.recipe import LearnerRecipe
from manymodels.aggregation import get_rule
from manymodels.protocol import (CodecError, Coded, Identity, Logits, Reason, RejectedMessage, Weights, dense,
                                 get_codec, list_codecs, open_envelope, seal)
from manymodels.protocol import codecs
from manymodels.protocol.codecs import LOG_FLOOR

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 33)).astype(np.float32)  # 2112 values: not a multiple of the blocks below
ALICE = Identity(bytes(range(32)))
NOW = 1_700_000_000_000


def round_trip(spec: str, array: np.ndarray = X, base: np.ndarray | None = None) -> np.ndarray:
    coded = get_codec(spec).encode(array, np.random.default_rng(1), base=base)
    payload = open_envelope(seal(ALICE, Weights("m", 1, 1, [coded]), 1, NOW), now_ms=NOW).payload  # on the wire
    decoded = dense(payload.tensors[0], base=base)
    assert decoded.dtype == np.float32 and decoded.shape == array.shape
    return decoded


# --- round trips ------------------------------------------------------------------------------------


def test_float32_is_exact_and_sends_the_array_as_it_is():
    assert get_codec("float32").encode(X) is X
    np.testing.assert_array_equal(round_trip("float32"), X)


@pytest.mark.parametrize("spec, relative_error", [("float16", 2**-11), ("bfloat16", 2**-8)])
def test_half_precisions_round_to_nearest(spec, relative_error):
    assert np.all(np.abs(round_trip(spec) - X) <= relative_error * np.abs(X) + 1e-7)


def test_float16_is_a_plain_f2_array_and_saturates_instead_of_overflowing():
    coded = get_codec("float16").encode(np.array([1e6, -1e6, 1.5], np.float32))
    assert isinstance(coded, np.ndarray) and coded.dtype.str == "<f2"
    assert coded.tolist() == [65504.0, -65504.0, 1.5]


@pytest.mark.parametrize("spec, block", [("int8", X.size), ("int8:256", 256), ("int8:8", 8)])
def test_int8_error_is_at_most_half_a_step_of_its_block(spec, block):
    flat = X.ravel()
    blocks = math.ceil(flat.size / block)
    step = np.repeat([np.abs(flat[i * block:(i + 1) * block]).max() / 127 for i in range(blocks)], block)[:flat.size]
    coded = get_codec(spec).encode(X)
    assert coded.params == (float(block),) and len(coded.parts[1]) == blocks
    assert np.all(np.abs(round_trip(spec).ravel() - flat) <= step / 2 * (1 + 1e-5))


@pytest.mark.parametrize("bits, block", [(4, 256), (3, 8), (2, 0), (5, 16), (8, 256)])
def test_qint_error_is_at_most_half_a_step_of_its_block_and_packs_bits_a_value(bits, block):
    flat, levels = X.ravel(), 2 ** (bits - 1) - 1
    size = block or flat.size
    blocks = math.ceil(flat.size / size)
    step = np.repeat([np.abs(flat[i * size:(i + 1) * size]).max() / levels for i in range(blocks)], size)[:flat.size]
    coded = get_codec(f"qint:{bits}:{block}").encode(X)
    assert coded.params == (float(bits), float(size)) and len(coded.parts[1]) == blocks
    assert len(coded.parts[0]) == math.ceil(flat.size * bits / 8)
    assert np.all(np.abs(round_trip(f"qint:{bits}:{block}").ravel() - flat) <= step / 2 * (1 + 1e-5))


def test_qint_of_8_bits_decodes_as_int8_does():
    np.testing.assert_array_equal(round_trip("qint:8:256"), round_trip("int8:256"))


def test_int8_block_beyond_the_tensor_is_one_scale():
    coded = Coded("int8", (2,), (2.0**62,), (arr("|i1", [2, -4]), arr("<f4", [0.5])))
    payload = open_envelope(seal(ALICE, Weights("m", 1, 1, [coded]), 1, NOW), now_ms=NOW).payload
    assert dense(payload.tensors[0]).tolist() == [1.0, -2.0]


def test_int8_of_zeros_and_of_an_empty_tensor():
    np.testing.assert_array_equal(round_trip("int8", np.zeros(5, np.float32)), np.zeros(5))
    assert round_trip("int8", np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_topk_keeps_exactly_the_k_values_that_differ_most_from_the_base():
    base = RNG.normal(size=X.shape).astype(np.float32)
    k = math.ceil(0.05 * X.size)
    coded = get_codec("topk:0.05").encode(X, base=base)
    index = coded.parts[0]
    assert len(index) == k and index.dtype.str == "<i4" and np.all(np.diff(index) > 0)
    assert set(index.tolist()) == set(np.argsort(-np.abs(X - base).ravel())[:k].tolist())
    decoded = round_trip("topk:0.05", base=base).ravel()
    np.testing.assert_array_equal(decoded[index], X.ravel()[index])  # the values themselves, exactly
    kept = np.zeros(X.size, bool)
    kept[index] = True
    np.testing.assert_array_equal(decoded[~kept], base.ravel()[~kept])  # the rest: the receiver's base


@pytest.mark.parametrize("misleading_sample", [False, True])
def test_topk_of_many_chunks_keeps_the_k_largest_changes(misleading_sample):
    """Beyond a chunk, top-k keeps what a strided sample's threshold lets through; a sample that sees
    only the largest changes (here every stride-th value changed by 2, the rest by at most 1) sets
    it too high for k, and top-k then takes every change and still picks the k largest."""
    n, fraction = 5 * codecs._CHUNK + 3, 0.25
    stride, k = n // codecs._CHUNK, math.ceil(fraction * n)
    base = RNG.normal(size=n).astype(np.float32)
    change = RNG.uniform(-1, 1, n).astype(np.float32)
    if misleading_sample:
        change[::stride] = 2
    x = base + change
    index = get_codec(f"topk:{fraction}").encode(x, base=base).parts[0]
    assert len(index) == k and np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(np.sort(np.abs(x - base)[index]), np.sort(np.abs(x - base))[-k:])


def test_randk_moves_a_base_k_over_n_of_the_way_in_expectation():
    """rand-k sends values, not differences, so no n/k scaling: decoded against a base b, its mean over
    draws is b + (k/n)(x - b), each index equally likely (docs/COMPRESSION.md)."""
    x, base = np.arange(20, dtype=np.float32), np.zeros(20, np.float32)
    codec, rng = get_codec("randk:0.25"), np.random.default_rng(3)
    draws = np.stack([dense(codec.encode(x, rng, base=base), base=base) for _ in range(4000)])
    np.testing.assert_allclose(draws.mean(axis=0), 0.25 * x, atol=0.03 * x.max())
    chosen = (draws != 0).sum(axis=0)[1:]  # index 0 holds 0 either way
    assert chosen.min() > 0.85 * 1000 and chosen.max() < 1.15 * 1000


@pytest.mark.parametrize("bits", [8, 4, 1])
def test_uint8_log_probabilities_within_half_a_level(bits):
    logits = RNG.normal(scale=4, size=(30, 10)).astype(np.float32)
    coded = get_codec(f"uint8:{bits}").encode(logits)
    assert coded.parts[0].nbytes == math.ceil(logits.size * bits / 8)  # packed
    payload = open_envelope(seal(ALICE, Logits(b"\0" * 32, "m", 1, 2.0, coded, [1] * 10), 1, NOW), now_ms=NOW).payload
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    level = -LOG_FLOOR / (2**bits - 1)
    assert np.all(np.abs(dense(payload.logits) - np.maximum(log_probs, LOG_FLOOR)) <= level / 2 + 1e-5)


def test_codec_specs_are_checked_in_one_line():
    for spec, words in [("zip", "unknown codec 'zip'; available: float32"), ("topk", "lacks parameter fraction"),
                        ("topk:0.3", "fraction=0.3 is not in (0, 0.25]"), ("int8:4", "block=4 is not 0 (one scale"),
                        ("uint8:9", "bits=9 is not in [1, 8]"), ("float16:2", "has too many parameters")]:
        with pytest.raises(CodecError, match=re.escape(words)):
            get_codec(spec)
    assert get_codec(" int8 ").spec == "int8:0"
    with pytest.raises(SpecError, match="--compress uint8: uint8 compresses logits, not weights"):
        NodeSpec.parse(LearnerRecipe(), compress="uint8")
    with pytest.raises(SpecError, match="--compress-logits topk:0.1: topk compresses weights, not logits"):
        NodeSpec.parse(LearnerRecipe(), exchange="distill", compress_logits="topk:0.1")
    with pytest.raises(SpecError, match="--compress compresses weights, which --exchange distill does not send"):
        NodeSpec.parse(LearnerRecipe(), exchange="distill", compress="int8")


CODEC_PLUGIN = """
    import numpy as np
    from manymodels.aggregation import Param
    from manymodels.protocol import Coded, CodecSpec

    def encode(array, rng, base, *, scale):
        return Coded("{p}scaled", array.shape, (float(scale),), ((array.ravel() / scale).astype("<f4"),))

    def decode(coded, base):
        return (coded.parts[0] * np.float32(coded.params[0])).reshape(coded.shape)

    CODEC = CodecSpec("{p}scaled", ("weights",), encode, decode=decode,
                      params=(Param("scale", float, "> 0", lambda v: v > 0),), description="divided by scale")
    NOT_A_CODEC = 42
"""


def test_codec_plugins_load_from_their_entry_points(tmp_path, monkeypatch):
    from test_rule_entrypoints import install

    p = f"p{uuid.uuid4().hex[:8]}-"
    module = f"mm_codecs_{p[1:-1]}"
    install(tmp_path, monkeypatch, {f"{p}scaled": f"{module}:CODEC", f"{p}bad": f"{module}:NOT_A_CODEC",
                                    f"{p}broken": "mm_no_such_module:CODEC"},
            {module: CODEC_PLUGIN.replace("{p}", p)}, group="manymodels.codecs")
    codec = get_codec(f"{p}scaled:4")
    x = np.array([1.0, -2.0], np.float32)
    payload = open_envelope(seal(ALICE, Weights("m", 1, 1, [codec.encode(x)]), 1, NOW), now_ms=NOW).payload
    np.testing.assert_array_equal(dense(payload.tensors[0]), x)
    with pytest.raises(CodecError, match=f"codec plugin '{p}bad' from .* is not a CodecSpec named '{p}bad'"):
        get_codec(f"{p}bad")
    with pytest.raises(CodecError, match=f"codec plugin '{p}broken' from .* failed to load: ModuleNotFoundError"):
        get_codec(f"{p}broken")
    rows = {row["name"]: row for row in list_codecs()}
    assert rows[f"{p}scaled"]["description"] == "divided by scale" and rows[f"{p}scaled"]["error"] is None
    assert "is not a CodecSpec" in rows[f"{p}bad"]["error"] and rows["int8"]["source"] == "builtin"


# --- error feedback ---------------------------------------------------------------------------------


def descend_and_publish(feedback: bool, steps: int = 600) -> float:
    """A node descends ||x - t||^2 and publishes x after every step with top-k 1 %; a receiver rebuilds
    x from the messages alone. How far the receiver's x ends from the optimum t, relative to |t|."""
    rng = np.random.default_rng(5)
    target = rng.normal(size=2000).astype(np.float32)
    x = np.zeros_like(target)
    sender = ErrorFeedback(get_codec("topk:0.01"), feedback=feedback)
    sender.start([x])
    heard = x.copy()
    for _ in range(steps):
        x = x - 0.05 * 2 * (x - target)
        heard = dense(sender.compress([x])[0], base=heard)
    return float(np.linalg.norm(heard - target) / np.linalg.norm(target))


def test_topk_with_error_feedback_reaches_the_optimum_and_without_it_does_not():
    assert descend_and_publish(feedback=True) < 1e-3
    # without feedback top-k picks this step's largest changes: the same coordinates every step
    assert descend_and_publish(feedback=False) > 0.5


@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("codec, levels", [("int8", 127), ("qint:3", 3)])
def test_quantiser_error_feedback_makes_the_mean_of_what_is_sent_exact(feedback, codec, levels):
    """0.003 and -0.0021 round to 0 next to 1.0 every time; with feedback what was dropped is sent later,
    so the mean of 200 messages is off by at most the residual left, half a step, over 200."""
    value = np.array([1.0, 0.003, -0.0021], np.float32)
    sender = ErrorFeedback(get_codec(codec), feedback=feedback)
    sent = np.mean([dense(sender.compress([value])[0]) for _ in range(200)], axis=0)
    if feedback:
        np.testing.assert_allclose(sent, value, atol=1.02 / levels / 2 / 200)
    else:
        assert sent[1] == sent[2] == 0.0


# --- hostile coded tensors ----------------------------------------------------------------------------


def arr(dtype: str, values) -> np.ndarray:
    return np.array(values, dtype=np.dtype(dtype))


HOSTILE = {
    "too many indices": (Coded("topk", (2,), (), (arr("<i4", [0, 1, 1]), arr("<f4", [1, 2, 3]))), Reason.BAD_CODING),
    "index out of range": (Coded("topk", (4,), (), (arr("<i4", [1, 4]), arr("<f4", [1, 2]))), Reason.BAD_CODING),
    "negative index": (Coded("topk", (4,), (), (arr("<i8", [-1, 2]), arr("<f4", [1, 2]))), Reason.BAD_CODING),
    "unsorted indices": (Coded("randk", (4,), (), (arr("<i4", [2, 1]), arr("<f4", [1, 2]))), Reason.BAD_CODING),
    "repeated index": (Coded("topk", (4,), (), (arr("<i4", [1, 1]), arr("<f4", [1, 2]))), Reason.BAD_CODING),
    "NaN value": (Coded("topk", (4,), (), (arr("<i4", [1]), arr("<f4", [np.nan]))), Reason.BAD_CODING),
    "fewer values than indices": (Coded("topk", (4,), (), (arr("<i4", [1, 2]), arr("<f4", [1]))),
                                  Reason.SHAPE_MISMATCH),
    "float indices": (Coded("topk", (4,), (), (arr("<f4", [1]), arr("<f4", [1]))), Reason.SCHEMA),
    "2-D part": (Coded("topk", (4,), (), (arr("<i4", [[1]]), arr("<f4", [1]))), Reason.SCHEMA),
    "huge declared shape": (Coded("topk", (2**39, 2**39), (), (arr("<i4", [0]), arr("<f4", [1]))), Reason.TOO_LARGE),
    "just over the limit": (Coded("topk", (2**27 + 1,), (), (arr("<i4", [0]), arr("<f4", [1]))), Reason.TOO_LARGE),
    "NaN scale": (Coded("int8", (2,), (2.0,), (arr("|i1", [1, 1]), arr("<f4", [np.nan]))), Reason.BAD_CODING),
    "infinite scale": (Coded("int8", (2,), (2.0,), (arr("|i1", [1, 1]), arr("<f4", [np.inf]))), Reason.BAD_CODING),
    "negative scale": (Coded("int8", (2,), (2.0,), (arr("|i1", [1, 1]), arr("<f4", [-1]))), Reason.BAD_CODING),
    "scale that overflows": (Coded("int8", (1,), (1.0,), (arr("|i1", [127]), arr("<f4", [3e38]))), Reason.BAD_CODING),
    "too few scales": (Coded("int8", (9,), (4.0,), (arr("|i1", [0] * 9), arr("<f4", [1, 1]))), Reason.SHAPE_MISMATCH),
    "fractional block": (Coded("int8", (2,), (1.5,), (arr("|i1", [1, 1]), arr("<f4", [1, 1]))), Reason.SCHEMA),
    "int8 as uint8": (Coded("int8", (2,), (2.0,), (arr("|u1", [1, 1]), arr("<f4", [1]))), Reason.SCHEMA),
    "qint NaN scale": (Coded("qint", (2,), (4.0, 2.0), (arr("|u1", [0]), arr("<f4", [np.nan]))), Reason.BAD_CODING),
    "qint scale that overflows": (Coded("qint", (1,), (4.0, 1.0), (arr("|u1", [15]), arr("<f4", [3e38]))),
                                  Reason.BAD_CODING),
    "qint short codes": (Coded("qint", (5,), (3.0, 8.0), (arr("|u1", [0]), arr("<f4", [1]))), Reason.SHAPE_MISMATCH),
    "qint of 1 bit": (Coded("qint", (2,), (1.0, 2.0), (arr("|u1", [0]), arr("<f4", [1]))), Reason.SCHEMA),
    "qint block 0": (Coded("qint", (2,), (4.0, 0.0), (arr("|u1", [0]), arr("<f4", [1]))), Reason.SCHEMA),
    "bfloat16 NaN": (Coded("bfloat16", (1,), (), (arr("<u2", [0x7FC0]).view("<i2"),)), Reason.BAD_CODING),
    "bfloat16 short": (Coded("bfloat16", (3,), (), (arr("<i2", [0, 0]),)), Reason.SHAPE_MISMATCH),
    "uint8 of 9 bits": (Coded("uint8", (2,), (9.0, -16.0), (arr("|u1", [0, 0, 0]),)), Reason.SCHEMA),
    "uint8 floor above 0": (Coded("uint8", (2,), (8.0, 1.0), (arr("|u1", [0, 0]),)), Reason.SCHEMA),
    "unknown codec": (Coded("zstd", (2,), (), (arr("|u1", [0]),)), Reason.UNKNOWN_CODEC),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_coded_tensor_is_refused_with_its_reason_before_allocating(case):
    coded, reason = HOSTILE[case]
    sealed = seal(ALICE, Weights("m", 1, 1, [coded]), 1, NOW)
    tracemalloc.start()
    try:
        with pytest.raises(RejectedMessage) as info:
            open_envelope(sealed, now_ms=NOW)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.reason is reason, info.value
    assert peak < 256 * 1024  # what a rejected input costs (PROTOCOL.md §9), nothing of the declared size


def test_a_coded_logits_matrix_must_have_two_dims():
    flat = Coded("uint8", (6,), (8.0, -16.0), (arr("|u1", [0] * 6),))
    with pytest.raises(RejectedMessage) as info:
        open_envelope(seal(ALICE, Logits(b"\0" * 32, "m", 1, 2.0, flat, [1] * 6), 1, NOW), now_ms=NOW)
    assert info.value.reason is Reason.SCHEMA


def test_a_node_refuses_a_valid_coded_message_of_other_shapes_before_decoding_it():
    """2^27 values (512 MiB dense) pass the protocol's bound; the node's own shapes refuse them unbuilt."""
    big = Coded("topk", (2**27,), (), (arr("<i4", [0]), arr("<f4", [1])))
    message = open_envelope(seal(ALICE, Weights("mlp", 1, 1, [big]), 1, NOW), now_ms=NOW)

    class View:
        learner = type("L", (), {"architecture": "mlp", "supports_weights": True})()
        tensor_specs = [((4,), np.dtype(np.float32))]
        shapes = ((4,),)

    tracemalloc.start()
    try:
        reason = WeightGossip(get_rule("fedavg")).receive(View(), message)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reason == "tensor_mismatch" and peak < 64 * 1024


DTYPES = ("|u1", "|i1", "<i2", "<i4", "<i8", "<f2", "<f4", "<f8")
NUMBERS = st.sampled_from([0.0, 1.0, 2.0, 4.0, 8.0, 9.0, 1.5, -1.0, -16.0, -1e4, 2.0**62, float(2**63)])


@st.composite
def coded_tensors(draw) -> Coded:
    shape = tuple(draw(st.lists(st.integers(0, 6) | st.just(2**39), max_size=3)))
    parts = []
    for dtype in draw(st.lists(st.sampled_from(DTYPES), max_size=4)):
        size = draw(st.integers(0, 8)) * np.dtype(dtype).itemsize
        parts.append(np.frombuffer(draw(st.binary(min_size=size, max_size=size)), dtype))
    return Coded(draw(st.sampled_from(["int8", "qint", "topk", "randk", "bfloat16", "uint8", "float32", "zstd"])), shape,
                 tuple(draw(st.lists(NUMBERS, max_size=3))), tuple(parts))


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coded_tensors())
def test_any_coded_tensor_is_refused_or_decodes_to_its_shape(coded):
    try:
        payload = open_envelope(seal(ALICE, Weights("m", 1, 1, [coded]), 1, NOW), now_ms=NOW).payload
    except RejectedMessage:
        return
    decoded = dense(payload.tensors[0])
    assert decoded.dtype == np.float32 and decoded.shape == coded.shape and np.isfinite(decoded).all()


# --- a compressed network ---------------------------------------------------------------------------


def weights_bytes(report: dict) -> int:
    return sum(n["bytes_sent_by_kind"]["weights"] for n in report["nodes"])


@pytest.mark.slow
def test_compressed_weight_gossip_still_learns_on_far_fewer_bytes():
    config = dict(nodes=6, rounds=20, partition="dirichlet:0.3", seed=0)
    plain = run_simulation(SimulationConfig(**config))
    assert "compress" not in plain["config"]  # the default leaves earlier reports as they were
    for codec, fewer, gain in (("int8", 3.5, 0.2), ("qint:3", 8.5, 0.2), ("topk:0.05", 8.0, 0.05)):
        report = run_simulation(SimulationConfig(**config, compress=codec))
        summary = report["summary"]
        assert report["config"]["compress"] == codec
        assert summary["mean_accuracy"] >= summary["mean_local_only_accuracy"] + gain, (codec, summary)
        assert weights_bytes(plain) >= fewer * weights_bytes(report), codec
        assert summary["rejected_messages"] == 0 and not any(n["refused_by_reason"] for n in report["nodes"])


@pytest.mark.slow
def test_distillation_with_uint8_logits_matches_float16_on_fewer_bytes():
    config = dict(nodes=4, rounds=6, exchange="distill", seed=0)
    half = run_simulation(SimulationConfig(**config))
    quarter = run_simulation(SimulationConfig(**config, compress_logits="uint8"))
    assert quarter["config"]["compress_logits"] == "uint8"
    assert abs(quarter["summary"]["mean_accuracy"] - half["summary"]["mean_accuracy"]) < 0.03
    logit_bytes = [sum(n["bytes_sent_by_kind"]["logits"] for n in r["nodes"]) for r in (half, quarter)]
    assert logit_bytes[0] > 1.7 * logit_bytes[1]
