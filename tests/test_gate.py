"""The peer gate: pure bookkeeping of what a peer may cost, with the time handed in."""
from manymodels.node.p2p.gate import BLOCKED, NEW_AUTHORS, OK, THROTTLED, GateConfig, PeerGate


def test_a_peer_whose_frames_keep_failing_is_throttled_then_blocked_then_let_back():
    gate = PeerGate(GateConfig(forgive_per_s=1.0, throttle_at=5, block_at=10, block_s=60))
    standings = [gate.strike("p", "malformed", 0.0) for _ in range(11)]
    assert standings[:5] == [OK] * 5 and THROTTLED in standings and standings[-1] == BLOCKED
    assert gate.admit("p", 1.0) == BLOCKED and gate.is_blocked("p", 59.0)
    assert gate.admit("q", 1.0) == OK  # the others are not touched
    assert gate.admit("p", 61.0) == OK and gate.standing("p", 61.0) == {"strikes": 0.0, "blocked_s": 0}


def test_strikes_decay_and_mild_reasons_weigh_less():
    gate = PeerGate(GateConfig(forgive_per_s=1.0, throttle_at=5, block_at=10))
    for t in range(100):  # an honest peer with one bad frame a second never gets throttled
        assert gate.strike("honest", "malformed", float(t)) == OK
    for _ in range(20):  # twenty replays at once are five strikes
        gate.strike("slow-clock", "replayed", 200.0)
    assert gate.standing("slow-clock", 200.0)["strikes"] == 5.0


def test_frames_over_the_rate_are_dropped_and_count():
    gate = PeerGate(GateConfig(frames_per_s=10, frame_burst=20, throttle_at=100, block_at=200))
    verdicts = [gate.admit("flood", 0.0) for _ in range(50)]
    assert verdicts.count(OK) == 20 and verdicts.count(THROTTLED) == 30
    assert gate.events["rate_limited"] == 30
    assert gate.admit("flood", 1.0) == OK  # refilled: ten more a second


def test_serving_is_metered_in_bytes_per_peer():
    gate = PeerGate(GateConfig(serve_bytes_per_s=1000, serve_burst=4000))
    served = sum(gate.may_serve("p", 1000, 0.0) for _ in range(10))
    assert served == 4 and gate.may_serve("other", 1000, 0.0)
    assert gate.may_serve("p", 1000, 1.0) and not gate.may_serve("p", 1000, 1.0)


def test_new_announcement_authors_are_metered_per_forwarder():
    gate = PeerGate(GateConfig(new_authors_per_min=16, new_authors_burst=32))
    introduced = sum(gate.may_introduce("relay", 0.0) for _ in range(100))
    assert introduced == 32 and gate.events["new_authors_refused"] == 68
    assert gate.may_introduce("other", 0.0)  # per forwarder
    assert sum(gate.may_introduce("relay", 60.0) for _ in range(100)) == 16  # sixteen a minute
    assert gate.strike("relay", NEW_AUTHORS, 60.0) == OK and gate.standing("relay", 60.0)["strikes"] == 0.25  # mild


def test_tables_are_bounded():
    gate = PeerGate(GateConfig(max_peers=100, max_blocked=10, block_at=0.5))
    for i in range(1000):
        gate.admit(f"peer{i}", 0.0)
        gate.strike(f"bad{i}", "malformed", 0.0)
    assert len(gate._peers) <= 100 and len(gate.blocked_until) <= 10


def test_blocking_many_peers_leaves_a_bounded_log(caplog):
    """Peer ids cost nothing: the transport's line per blocked peer is rate-limited (5 a minute)."""
    import logging

    from manymodels.node.p2p.libp2p import logger
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for i in range(50):
            logger.warning("blocked %s for %.0f s: its frames kept failing", f"peer{i}", 600)
    assert len(caplog.records) == 5
