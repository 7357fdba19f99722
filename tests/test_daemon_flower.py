"""An unmodified Flower client app as the learner of real node daemons (separate processes on
loopback): three daemons, each running examples/flower_client/client_app.py with its own partition
and joined through one bootstrap peer, beat the same client trained alone; a Message-API app runs
in a daemon exactly as FlowerLearner runs it, and restarts from another directory; a bad
--client-app is one clear line."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_daemon import EXE, status, stop
from waiting import wait_until as wait_for

from manymodels.node.runtime.control import request
from manymodels.node.runtime.store import Home

ROOT = Path(__file__).resolve().parents[1]
NUMPY_APP = "examples/flower_client/client_app.py:app"  # relative to ROOT, as the README runs it
MESSAGE_APP = "examples/flower_client/client_app_message.py:app"
PARTITIONS = 3
CYCLES = 12


def start(home: Path, *args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run([str(EXE), "node", "start", "--home", str(home), "--detach", *args],
                         capture_output=True, text=True, timeout=180, cwd=cwd)
    assert out.returncode == 0, out.stderr + (home / "daemon.log").read_text(errors="replace")
    return out.stdout


def flower_args(app: str, partition_id: int) -> list[str]:
    return ["--client-app", app, "--partition-id", str(partition_id), "--num-partitions", str(PARTITIONS),
            "--period", "1"]


def alone(app: str, partition_id: int):
    """The client as a daemon with --seed 0 runs it (node/learning/recipe.py), here in this process."""
    from manymodels.node.learning.flower import FlowerLearner

    return FlowerLearner(str(ROOT / app), partition_id=partition_id, num_partitions=PARTITIONS, run_config="",
                         seed=partition_id, init_seed=0, run_id=1)


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.multiprocess, pytest.mark.slow]


def test_a_bad_client_app_is_one_clear_line_and_a_non_zero_exit(cli, tmp_path):
    app = ROOT / "examples" / "flower_client" / "client_app.py"
    cases = [
        ([f"{app}:no_such_app"], "has no attribute no_such_app"),  # found by the worker, at start
        (["no_such_module:app"], "cannot import client app no_such_module"),
        (["missing.py:app"], "missing.py does not exist"),  # found before the daemon starts
        ([f"{app}:app", "--run-config", "no-such-key=1"], "does not define"),
        ([f"{app}:app", "--exchange", "distill"], "--exchange weights"),
    ]
    for i, (args, expected) in enumerate(cases):
        out = cli("node", "start", "--home", tmp_path / f"bad{i}", "--detach", "--wait", "--client-app", *args)
        assert out.returncode != 0, args
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().count("\n") == 0, out.stderr
    out = cli("node", "start", "--home", tmp_path / "nothing", "--run-config", "lr=0.1")
    assert out.returncode == 2 and "give --client-app too" in out.stderr


def test_the_rule_reaches_the_client_train_config_in_a_daemon(tmp_path):
    """What a daemon's worker builds: the client with its partition, run config, and what the rule
    adds to each train config (FedProx's proximal_mu), as a Flower server would send it."""
    from manymodels.node.runtime.daemon import Daemon, DaemonConfig
    from manymodels.node.learning.recipe import LearnerRecipe

    recipe = LearnerRecipe(client_app=str(ROOT / NUMPY_APP), run_config="lr=0.005", partition_id=2,
                           num_partitions=PARTITIONS, seed=7)
    daemon = Daemon(Home(tmp_path / "home"), DaemonConfig(recipe=recipe, rule="flwr:FedProx:proximal_mu=0.1"))
    assert daemon._fit_config() == {"proximal_mu": 0.1}
    learner, data, probe, index = recipe.build(daemon._fit_config())
    assert data is None and probe is None and index is None  # the client loads its own data
    assert learner.client.fit_config == {"proximal_mu": 0.1}
    assert learner.client.context.node_config == {"partition-id": 2, "num-partitions": PARTITIONS}
    assert learner.client.context.run_config == {"local-epochs": 1, "lr": 0.005}
    assert learner.client.seed == 7 * 1_000_003 + 2 and learner.num_examples == 0
    learner.fit(1)
    assert learner.num_examples > 0
    builtin = Daemon(Home(tmp_path / "builtin"), DaemonConfig(rule="flwr:FedProx:proximal_mu=0.1"))
    assert builtin._fit_config() == {}


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    """Three daemons with the NumPyClient app (a, b, c: partitions 0..2 of 3; b and c know only a),
    and one on its own with the Message-API app (m: partition 1 of 3)."""
    root = tmp_path_factory.mktemp("flower")
    homes = {name: root / name for name in "abcm"}
    try:
        start(homes["a"], *flower_args(NUMPY_APP, 0))
        bootstrap = status(homes["a"])["addrs"][0]
        start(homes["m"], *flower_args(MESSAGE_APP, 1))
        for i, name in enumerate("bc", start=1):
            start(homes[name], *flower_args(NUMPY_APP, i), "--bootstrap", bootstrap)
        yield homes
    finally:
        for home in homes.values():
            stop(home)


def test_three_flower_daemons_joined_through_one_bootstrap_beat_local_only(daemons):
    network = [daemons[name] for name in "abc"]
    wait_for(lambda: all(status(h)["peers"] == 2 for h in network), "every node to have two peers")
    wait_for(lambda: all(status(h)["version"] >= CYCLES for h in network), f"{CYCLES} cycles on every node", 150)
    architecture = status(network[0])["model"]
    assert architecture.startswith("flower-")
    # every daemon starts from the same first model: the network's seed, not its partition, draws it
    learners = [alone(NUMPY_APP, i) for i in range(PARTITIONS)]
    for other in learners[1:]:
        assert all(np.array_equal(x, y) for x, y in zip(learners[0].get_weights(), other.get_weights()))
    gains = []
    for i, (home, learner) in enumerate(zip(network, learners)):
        s = status(home)
        learner.fit(s["version"])  # the same client, alone, for as many rounds as the daemon has trained
        local_only = learner.evaluate()["accuracy"]
        print(f"partition {i}: daemon {s['accuracy']:.3f} at version {s['version']}, local-only {local_only:.3f}")
        assert s["accuracy"] > local_only + 0.1, (i, s["accuracy"], local_only)
        gains.append(s["accuracy"] - local_only)
        assert s["model"] == architecture and s["messages_accepted"] > 0
        assert sum(s["rejected"].values()) == 0 and s["refused"] == {}
        peers = request(home / "control.sock", "peers")
        assert sum(p["connected"] for p in peers) == 2
        assert all(p["offered"].get("weights") == architecture for p in peers)
        # the weight each daemon folds with is what its client's fit reported, not the 0 of before it
        checkpoint = Home(home).load_checkpoint()
        assert checkpoint.num_examples == learner.num_examples > 0
    assert np.mean(gains) > 0.15


def test_a_message_api_daemon_runs_the_client_exactly_as_flower_learner_and_restarts_elsewhere(daemons,
                                                                                                  tmp_path):
    home = daemons["m"]
    wait_for(lambda: status(home)["version"] >= 6, "6 cycles", 120)
    s = status(home)
    assert s["model"].startswith("flower-") and s["model"] != status(daemons["a"])["model"]  # named arrays
    assert s["peers"] == 0
    history = {e["version"]: e["accuracy"] for e in json.loads((home / "state.json").read_text())["history"]}
    # alone, a daemon is local-only: train, evaluate, train, ... with the same seeds, the same numbers
    learner = alone(MESSAGE_APP, 1)
    for version in range(1, 6):
        learner.fit(1)
        assert round(learner.evaluate()["accuracy"], 4) == history[version], version
    assert Home(home).load_checkpoint().num_examples == learner.num_examples > 0
    # the app's path was stored absolute: a restart from another directory finds it and its checkpoint
    stop(home)
    checkpoint = Home(home).load_checkpoint()
    learner.set_weights(checkpoint.tensors)
    start(home, cwd=tmp_path)
    entries = wait_for(lambda: [e for e in json.loads((home / "state.json").read_text())["history"]
                                if e.get("restored")], "the first save after the restart", 60)
    assert entries[-1]["version"] == checkpoint.version
    assert entries[-1]["accuracy"] == round(learner.evaluate()["accuracy"], 4)
    assert str(ROOT) in json.loads((home / "config.json").read_text())["recipe"]["client_app"]
    maps = Path(f"/proc/{(home / 'daemon.pid').read_text().strip()}/maps")
    if maps.exists():  # torch (and flwr) are imported by the worker process only
        assert "torch" not in maps.read_text()
