"""The simulator's reports for fixed seeds, byte for byte (apart from wall time), as the code before the
node/ renovation (issue 9) wrote them: a refactoring that changes a number, a byte count or a key fails
here. The commands are the README's demo and short runs of each exchange, a robust rule under attack
with losses and a sparse topology, and a Flower client with a Flower strategy. After an intended change
of behaviour, regenerate: `python tests/test_golden_reports.py` (and say why in the commit)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
COMMANDS = {
    "weights": [],
    "distill-mixed": ["--exchange", "distill", "--model", "mixed", "--nodes", "5", "--rounds", "3"],
    "synthetic": ["--exchange", "synthetic", "--nodes", "4", "--rounds", "4", "--seed", "1"],
    "attack-median": ["--attack", "signflip:0.25", "--rule", "median", "--reputation", "0.5", "--rounds", "5",
                      "--topology", "random:4", "--loss", "0.1"],
    "flower-bulyan": ["--client-app", "examples/flower_client/client_app.py:app", "--rule",
                      "flwr:Bulyan:num_malicious_clients=1", "--attack", "signflip:0.125", "--rounds", "3"],
}


def report_text(name: str, tmp: Path) -> str:
    """The report of one command, wall time dropped, as `simulate --report` writes it."""
    from typer.testing import CliRunner

    from manymodels.cli.main import app

    path = tmp / f"{name}.json"
    result = CliRunner().invoke(app, ["simulate", *COMMANDS[name], "--report", str(path), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    del report["summary"]["wall_seconds"]
    return json.dumps(report, indent=2) + "\n"


@pytest.fixture(autouse=True)
def _from_the_repository_root(monkeypatch):
    monkeypatch.chdir(GOLDEN.parent.parent)  # the commands name examples/ relative to it


@pytest.mark.parametrize("name", COMMANDS)
def test_report_is_byte_identical(name, tmp_path):
    if name.startswith("flower"):
        pytest.importorskip("flwr")
    assert report_text(name, tmp_path) == (GOLDEN / f"{name}.json").read_text()


if __name__ == "__main__":  # regenerate the golden reports
    import os
    import tempfile

    os.chdir(GOLDEN.parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        for name in sys.argv[1:] or COMMANDS:
            (GOLDEN / f"{name}.json").write_text(report_text(name, Path(tmp)))
