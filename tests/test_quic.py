"""QUIC as a second transport: two daemons that listen on QUIC alone (`--listen .../udp/0/quic-v1`)
join and fold each other's signed weights. py-libp2p's QUIC (aioquic, TLS 1.3 with the libp2p
certificate extension, QUIC's own streams) replaces TCP + Noise + yamux; what runs over it is the same."""
import subprocess
import sys
from pathlib import Path

import pytest

from manymodels.node.runtime.control import request
from waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

EXE = Path(sys.executable).parent / "manymodels"
QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"


def start(home: Path, *args: str) -> dict:
    out = subprocess.run([str(EXE), "node", "start", "--home", str(home), "--detach", "--dataset", "digits",
                          "--model", "logreg", "--period", "1", "--num-partitions", "2", "--listen", QUIC, *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return request(home / "control.sock", "status")


@pytest.fixture
def homes(tmp_path):
    homes = [tmp_path / "a", tmp_path / "b"]
    yield homes
    for home in homes:
        subprocess.run([str(EXE), "node", "stop", "--home", str(home)], capture_output=True, timeout=60)


def test_two_daemons_on_quic_exchange_weights(homes):
    a = start(homes[0], "--partition-id", "0")
    assert a["addrs"] and all("/udp/" in addr and "/quic-v1/p2p/" in addr for addr in a["addrs"])
    b = start(homes[1], "--partition-id", "1", "--bootstrap", a["addrs"][0])
    assert all("/quic-v1/" in addr for addr in b["addrs"])
    folds = [f"folded 1 from {other['id'][-8:]}" for other in (b, a)]  # the log's short peer id
    wait_until(lambda: [(h / "daemon.log").read_text(errors="replace") for h in homes],
               "each daemon to fold the other's weights", 90,
               until=lambda logs: all(fold in log for fold, log in zip(folds, logs)))
    for home in homes:
        s = request(home / "control.sock", "status")
        assert s["peers"] == 1 and sum(s["rejected"].values()) == 0 and s["bytes_received"] > 0
