"""The daemon's contribution ledger (issue 13, point 3): each fold's change in held-out accuracy,
credited to the peers it took by the examples behind their messages; `manymodels value` shows it.
The arithmetic on constructed folds; then three real daemons on non-IID digits."""
import json

import numpy as np
import pytest

from manymodels.node.runtime.ledger import MAX_FOLDS, Ledger, examples_behind
from manymodels.protocol import Logits, SyntheticBatch, Weights
from test_daemon import RECIPE, start, status, stop
from waiting import wait_until


def test_a_fold_is_credited_to_its_peers_by_the_examples_behind_their_messages():
    ledger = Ledger()
    fold = ledger.record(3, 0.50, 0.70, [("a", 100), ("b", 300)], {"a": 0.9, "b": None})
    assert fold["shares"] == {"a": 0.25, "b": 0.75} and fold["reputation"] == {"a": 0.9, "b": None}
    ledger.record(4, 0.70, 0.66, [("b", 300), ("b", 100), ("c", 0)], {})  # b twice: one share; c speaks for none
    rows = {r["peer"]: r for r in ledger.table()}
    assert rows["a"]["credit"] == pytest.approx(0.05) and rows["a"]["folds"] == 1
    assert rows["b"]["credit"] == pytest.approx(0.15 - 0.04) and rows["b"]["folds"] == 2
    assert rows["b"]["share"] == pytest.approx(1.75) and rows["c"]["credit"] == 0
    assert [r["peer"] for r in ledger.table()] == ["b", "a", "c"]  # the largest credit first
    assert rows["b"]["credit_per_fold"] == pytest.approx((0.15 - 0.04) / 2)
    again = Ledger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert again.table() == ledger.table() and again.folds == ledger.folds


def test_messages_that_speak_for_no_examples_share_a_fold_equally_and_the_ledger_is_bounded():
    ledger = Ledger()
    assert ledger.record(1, 0.2, 0.5, [("a", 0), ("b", 0)], {})["shares"] == {"a": 0.5, "b": 0.5}
    for version in range(2, MAX_FOLDS + 10):
        ledger.record(version, 0.5, 0.5, [("a", 1)], {})
    assert len(ledger.folds) == MAX_FOLDS and ledger.folds[-1]["version"] == MAX_FOLDS + 9


def test_examples_behind_each_kind_of_knowledge():
    weights = Weights("mlp", 1, 120, [np.zeros(3, np.float32)])
    logits = Logits(bytes(32), "mlp", 1, 2.0, np.zeros((4, 3), np.float32), [5, 0, 7])
    synthetic = SyntheticBatch(np.zeros((6, 2), np.float32), np.zeros(6, np.int64),
                               {"licence": "CC0-1.0", "consent": "", "retention": "", "generator": "", "source": "",
                                "digest": bytes(32)})
    assert [examples_behind(p) for p in (weights, logits, synthetic)] == [120, 12, 6]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_value_shows_what_each_peer_added_to_a_live_nodes_model(cli, tmp_path):
    """Three daemons, each with a few classes of digits (Dirichlet 0.1): a fold of the others'
    models lifts a node's model above what its own data gave it, so its peers' credit is positive."""
    homes = [tmp_path / name for name in "abc"]
    try:
        start(homes[0], *RECIPE, "--partition-id", "0")
        for i, home in enumerate(homes[1:], 1):
            start(home, *RECIPE, "--partition-id", str(i), "--bootstrap", status(homes[0])["addrs"][0])
        peers = {status(home)["id"] for home in homes[1:]}

        def value() -> dict:
            return json.loads(cli("value", "--home", homes[0], "--json").stdout)
        result = wait_until(value, "folds crediting both peers", 120,
                            until=lambda v: {r["peer"] for r in v["peers"]} == peers and
                            min(r["folds"] for r in v["peers"]) >= 3)
        folds = result["folds"]
        assert all(set(f["shares"]) <= peers and sum(f["shares"].values()) == pytest.approx(1, abs=1e-3) for f in folds)
        assert sum(r["credit"] for r in result["peers"]) > 0, result  # knowledge from others helped
        table = cli("value", "--home", homes[0], "--wide")
        assert table.returncode == 0 and all(peer in table.stdout for peer in peers), table.stdout
    finally:
        for home in homes:
            stop(home)
    saved = json.loads((homes[0] / "state.json").read_text())["ledger"]
    assert set(saved["peers"]) == peers and len(saved["folds"]) >= 3  # kept across restarts
