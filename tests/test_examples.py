"""The README's examples run as written (`python examples/NAME.py`) and print what they say they do."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def run(name: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stdout


def test_signed_messages_accepts_the_sealed_message_and_rejects_the_tampered_ones():
    out = run("signed_messages.py")
    assert "accepted: weights" in out
    rejected = dict(re.findall(r"^\s*(\w+): rejected, reason (\w+)$", out, re.M))
    assert rejected == {"replayed": "replayed", "tampered": "digest_mismatch", "truncated": "malformed"}, out


def test_compare_rules_shows_averaging_beat_alone_and_krum_lose_on_non_iid_data():
    rows = re.findall(r"^\s*(\S+): many models (0\.\d+) \(min 0\.\d+\)\s+alone (0\.\d+)\s+pooled (0\.\d+)$",
                      run("compare_rules.py"), re.M)
    assert [r[0] for r in rows] == ["fedavg", "median", "trimmed:0.2", "krum:1", "gossip:0.5", "clippedgossip:1.0"]
    many = {rule: float(m) for rule, m, _, _ in rows}
    alone = float(rows[0][2])
    assert min(many["fedavg"], many["median"], many["trimmed:0.2"]) > alone + 0.2, rows
    assert many["krum:1"] < many["fedavg"] - 0.2, rows  # one node's model, chosen: non-IID data hurts it


def test_heterogeneous_network_lifts_every_architecture_above_alone_by_distillation():
    out = run("heterogeneous_network.py")
    distill = out.split("--- distill")[1].split("---")[0]
    rows = re.findall(r"^\s*(\S+): alone (0\.\d+) -> together (0\.\d+)", distill, re.M)
    assert {r[0] for r in rows} == {"logreg", "mlp", "mlp-wide", "cnn", "forest"}, out
    assert all(float(together) > float(alone) + 0.2 for _, alone, together in rows), rows
    assert out.count("--- ") == 3
