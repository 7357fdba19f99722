"""The console script as a user runs it: one clear line and a non-zero exit for mistakes."""
import json
import re
import stat

import pytest

from manymodels.protocol import Hello, Identity, seal


def test_keygen_prints_the_node_id_and_refuses_to_overwrite(cli, tmp_path):
    out = cli("keygen", "--out", tmp_path / "node.pem")
    assert out.returncode == 0, out.stderr
    node_id = out.stdout.strip()
    assert node_id.startswith("12D3KooW")
    assert stat.S_IMODE((tmp_path / "node.pem").stat().st_mode) == 0o600
    again = cli("keygen", "--out", tmp_path / "node.pem")
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_verify_valid_and_tampered_envelopes(cli, tmp_path):
    identity = Identity(bytes(range(32)))
    data = seal(identity, Hello("test"), seq=1, ts_ms=1_700_000_000_000)
    (tmp_path / "ok.bin").write_bytes(data)
    tampered = bytearray(data)
    tampered[-1] ^= 1
    (tmp_path / "bad.bin").write_bytes(bytes(tampered))

    ok = cli("verify", tmp_path / "ok.bin", "--json")
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["valid"] and result["kind"] == "hello" and result["sender"] == identity.peer_id

    bad = cli("verify", tmp_path / "bad.bin", "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout) == {"valid": False, "reason": "digest_mismatch",
                                      "detail": "payload does not hash to the signed digest",
                                      "bytes": len(data)}
    human = cli("verify", tmp_path / "bad.bin")
    assert human.returncode == 1 and "invalid: digest_mismatch" in human.stdout

    missing = cli("verify", tmp_path / "nope.bin")
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr


def test_rules_lists_the_registry_as_json(cli):
    out = cli("rules", "--json")
    assert out.returncode == 0, out.stderr
    names = {r["name"] for r in json.loads(out.stdout)}
    assert {"fedavg", "median", "trimmed", "krum", "multikrum", "bulyan", "gossip", "clippedgossip"} <= names


def test_rules_table_shows_a_required_parameter_by_its_domain_and_a_default_by_its_value(cli):
    out = cli("rules", env={"COLUMNS": "300"})
    assert out.returncode == 0 and "None" not in out.stdout
    assert "beta: float in [0, 0.5)" in out.stdout and "f: int >= 0" in out.stdout
    assert re.search(r"flwr:FedTrimmedAvg\s.*beta=0\.2", out.stdout), out.stdout


@pytest.mark.slow
def test_simulate_writes_a_report_and_shows_the_table(cli, tmp_path):
    out = cli("simulate", "--nodes", "3", "--rounds", "2", "--model", "logreg", "--partition", "iid",
              "--report", tmp_path / "run.json")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "run.json").read_text())
    assert len(report["nodes"]) == 3 and report["config"]["rounds"] == 2
    assert "many models" in out.stdout and "pooled model" in out.stdout
    shown = cli("report", tmp_path / "run.json")
    assert shown.returncode == 0 and report["nodes"][0]["id"][-6:] in shown.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args, text", [
    (["--rule", "krum:x"], "krum"),
    (["--rule", "unknown"], "unknown rule"),
    (["--partition", "dirichlet:abc"], "bad partition spec"),
    (["--topology", "random:99"], "random:K"),
    (["--dataset", "fashion-mnist"], "apt-get install dataset-fashion-mnist"),
    (["--nodes", "0"], "--nodes, --rounds and --local-epochs must be at least 1"),
])
def test_simulate_mistakes_are_one_line(cli, tmp_path, args, text):
    # An empty data folder stands in for a machine without the optional Debian package.
    out = cli("simulate", "--rounds", "1", *args, env={"MANYMODELS_FASHION_MNIST_DIR": str(tmp_path)})
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert text in out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1  # one line: no empty one before it
