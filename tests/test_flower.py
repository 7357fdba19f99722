"""Flower interop: unmodified Flower client apps as learners, Flower strategies as rules."""
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from manymodels.aggregation import RuleError, check_inputs, get_rule, list_rules
from manymodels.node.learning.flower import FlowerError, FlowerLearner, load_client_app, parse_run_config
from manymodels.node.sim.simulator import SimulationConfig, run_simulation
from manymodels.node.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower_client"
NUMPY_APP = f"{EXAMPLE}/client_app.py:app"
MESSAGE_APP = f"{EXAMPLE}/client_app_message.py:app"
NON_IID = dict(nodes=4, rounds=6, seed=0)


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def _app_file(tmp_path, name, body):
    """A client app module in tmp_path that can import the example's client_app."""
    path = tmp_path / f"{name}.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(EXAMPLE)!r})\n" + textwrap.dedent(body))
    return path


# --- the examples, unmodified, in a simulated non-IID network ----------------------------------

@pytest.fixture(scope="module", params=[NUMPY_APP, MESSAGE_APP], ids=["numpy-client", "message-api"])
def example_report(request):
    return run_simulation(SimulationConfig(client_app=request.param, **NON_IID))


def test_unmodified_flower_client_apps_learn_beyond_local_only(example_report):
    s = example_report["summary"]
    # Dirichlet(0.5) by label over 4 partitions: alone, each node misses whole classes.
    assert s["mean_local_only_accuracy"] < 0.8
    assert s["mean_accuracy"] > s["mean_local_only_accuracy"] + 0.1
    assert s["mean_accuracy"] > 0.75
    assert s["pooled_accuracy"] > 0.9
    assert s["test_examples"] == 359 and s["rejected_messages"] == 0
    nodes = example_report["nodes"]
    assert len(nodes) == 4 and len({n["num_examples"] for n in nodes}) > 1  # each loaded its own partition
    assert sum(n["num_examples"] for n in nodes) == 1438  # the whole training split, once
    assert all(n["model"].startswith("flower-") and len(n["history"]) == 6 for n in nodes)
    assert example_report["probe"] is None and example_report["config"]["client_app"].endswith(":app")


def test_flower_simulation_is_deterministic_for_a_seed():
    config = SimulationConfig(client_app=MESSAGE_APP, nodes=3, rounds=2, seed=5)
    first, second = run_simulation(config), run_simulation(config)
    assert [n["history"] for n in first["nodes"]] == [n["history"] for n in second["nodes"]]
    assert first["summary"]["mean_local_only_accuracy"] == second["summary"]["mean_local_only_accuracy"]


def test_context_gives_partition_and_run_config():
    learners = [FlowerLearner(NUMPY_APP, partition_id=i, num_partitions=3, run_config="lr=0.05") for i in range(3)]
    for i, learner in enumerate(learners):
        assert learner.client.context.node_config == {"partition-id": i, "num-partitions": 3}
        assert learner.client.context.run_config == {"local-epochs": 1, "lr": 0.05}  # pyproject defaults, overridden
        assert learner.num_examples == 0 and learner.fit(1)["num-examples"] == learner.num_examples > 0
    assert len({learner.num_examples for learner in learners}) == 3
    assert sum(learner.num_examples for learner in learners) == 1438


def test_a_function_returning_a_numpy_client_is_a_client_app(tmp_path):
    path = _app_file(tmp_path, "fn_app", """
        from client_app import FlowerClient, Net, load_data

        def make_client(context):
            node = context.node_config
            trainloader, testloader = load_data(node["partition-id"], node["num-partitions"])
            return FlowerClient(Net(), trainloader, testloader, local_epochs=1, lr=0.01)
    """)
    source = load_client_app(f"{path}:make_client")
    assert source.kind == "function" and source.defaults == {}  # no Flower pyproject.toml above tmp_path
    learner = FlowerLearner(source, partition_id=0, num_partitions=1)
    before = learner.evaluate()["accuracy"]
    learner.fit(2)
    assert learner.evaluate()["accuracy"] > before + 0.3 and learner.num_examples == 1438


# --- run config ---------------------------------------------------------------------------------

def test_run_config_is_parsed_as_flwr_run_parses_it():
    assert parse_run_config('lr=0.1 local-epochs=2 name="digits" fast=true') == {
        "lr": 0.1, "local-epochs": 2, "name": "digits", "fast": True}
    assert parse_run_config("model.depth=3 model.width=64") == {"model.depth": 3, "model.width": 64}
    assert parse_run_config(["a=1", "b='x y'"]) == {"a": 1, "b": "x y"}
    assert parse_run_config("") == {} and parse_run_config(None) == {}
    with pytest.raises(FlowerError, match="invalid format"):
        parse_run_config("name=unquoted")
    source = load_client_app(NUMPY_APP)
    assert source.run_config("lr=0.5") == {"local-epochs": 1, "lr": 0.5}
    with pytest.raises(FlowerError, match="sets batch, which the app's pyproject.toml does not define"):
        source.run_config("batch=3")


def test_run_config_reaches_the_client_and_its_train_config(tmp_path):
    path = _app_file(tmp_path, "recording_app", """
        from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
        from flwr.clientapp import ClientApp
        import numpy as np

        seen = []
        app = ClientApp()

        def Model():
            return ArrayRecord([np.zeros(3, dtype=np.float32)])

        @app.train()
        def train(msg, context):
            seen.append((dict(context.run_config), dict(msg.content["config"])))
            arrays = [a + 1 for a in msg.content["arrays"].to_numpy_ndarrays()]
            return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 7})}),
                           reply_to=msg)

        @app.evaluate()
        def evaluate(msg, context):
            metrics = MetricRecord({"top1_accuracy": 0.5, "num-examples": 1})
            return Message(RecordDict({"metrics": metrics}), reply_to=msg)
    """)
    learner = FlowerLearner(f"{path}:app:Model", run_config='lr=0.1 opt="sgd"',
                            fit_config=get_rule("flwr:FedProx:proximal_mu=0.3").client_config)
    learner.fit(2)
    module = sys.modules["recording_app"]
    assert module.seen[-1] == ({"lr": 0.1, "opt": "sgd"},
                               {"lr": 0.1, "opt": "sgd", "server-round": 2, "proximal_mu": 0.3})
    assert learner.get_weights()[0].tolist() == [2.0, 2.0, 2.0] and learner.num_examples == 7
    assert learner.evaluate()["accuracy"] == 0.5  # the first metric name containing "acc"
    assert not learner.supports_predict


# --- copies ---------------------------------------------------------------------------------

def test_arrays_a_client_returns_are_copied(tmp_path):
    path = _app_file(tmp_path, "views_app", """
        import numpy as np
        from flwr.client import ClientApp, NumPyClient

        LIVE = [np.zeros((2, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]  # the model, shared
        OUT = np.zeros((1, 3), dtype=np.float32)  # a reused output buffer

        class ViewClient(NumPyClient):
            def get_parameters(self, config):
                return [w[...] for w in LIVE]  # views of the live tensors, like tensor.numpy()

            def fit(self, parameters, config):
                for w, p in zip(LIVE, parameters):
                    w[...] = p + 1  # trains in place: every view handed out before changes
                return self.get_parameters(config), 4, {}

            def evaluate(self, parameters, config):
                return 0.0, 1, {"accuracy": float(parameters[0].mean())}

            def predict(self, parameters, x):
                OUT[...] = parameters[0].sum() + len(x)
                return OUT[: len(x)]  # a view of a buffer the next call overwrites

        app = ClientApp(client_fn=lambda context: ViewClient().to_client())
    """)
    learner = FlowerLearner(f"{path}:app")
    start = learner.get_weights()
    learner.fit(1)
    after_one = learner.get_weights()
    learner.fit(1)
    assert start[0].tolist() == [[0, 0], [0, 0]] and after_one[0].tolist() == [[1, 1], [1, 1]]
    assert learner.get_weights()[0].tolist() == [[2, 2], [2, 2]]
    assert learner.supports_predict and not learner.supports_distill
    first = learner.predict(np.zeros((1, 5)))
    learner.fit(1)
    learner.predict(np.zeros((1, 5)))
    assert first.tolist() == [[9.0, 9.0, 9.0]]  # not overwritten by the second call
    mine = learner.get_weights()
    mine[0][...] = 99
    assert learner.get_weights()[0][0, 0] == 3  # get_weights hands out copies too


def test_integer_tensors_travel_as_float64_and_reach_the_client_as_its_own_dtype(tmp_path):
    path = _app_file(tmp_path, "int_app", """
        import numpy as np
        from flwr.client import ClientApp, NumPyClient

        class CountingClient(NumPyClient):  # like BatchNorm's num_batches_tracked
            def get_parameters(self, config):
                return [np.zeros(2, dtype=np.float32), np.array(7, dtype=np.int64)]

            def fit(self, parameters, config):
                assert parameters[1].dtype == np.int64, parameters[1].dtype
                return [parameters[0] + 1, parameters[1] + 1], 4, {}

            def evaluate(self, parameters, config):
                return 0.0, 1, {"accuracy": 0.0}

        app = ClientApp(client_fn=lambda context: CountingClient().to_client())
    """)
    learner = FlowerLearner(f"{path}:app")
    learner.fit(1)
    weights = learner.get_weights()
    assert weights[1].dtype == np.float64 and weights[1] == 8  # on the wire: float64
    weights[1] = weights[1] + 0.4  # an average of counts need not be whole
    learner.set_weights(weights)
    learner.fit(1)
    assert learner.get_weights()[1] == 9  # rounded back to the client's int64


# --- distillation hooks -----------------------------------------------------------------------

HOOKS_APP = """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from client_app import FlowerClient, Net, load_data, set_parameters, get_parameters
    from flwr.client import ClientApp

    class DistillingClient(FlowerClient):
        def predict(self, parameters, x):
            set_parameters(self.net, parameters)
            with torch.no_grad():
                return self.net(torch.tensor(x, dtype=torch.float32)).numpy()

        def distill(self, parameters, x, target, config):
            set_parameters(self.net, parameters)
            optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
            x, target, t = torch.tensor(x), torch.tensor(target).exp(), config["temperature"]
            for _ in range(config["epochs"]):
                optimizer.zero_grad()
                loss = F.kl_div(F.log_softmax(self.net(x) / t, dim=1), target, reduction="batchmean") * t * t
                loss.backward()
                optimizer.step()
            return get_parameters(self.net)

    def client_fn(context):
        trainloader, testloader = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
        return DistillingClient(Net(), trainloader, testloader, 1, 0.01).to_client()

    app = ClientApp(client_fn=client_fn)
"""


def test_a_client_with_predict_and_distill_hooks_distills(tmp_path):
    path = _app_file(tmp_path, "hooks_app", HOOKS_APP)
    probe = tmp_path / "probe.npy"
    from sklearn.datasets import load_digits
    np.save(probe, (load_digits().images[:100, None] / 16.0).astype(np.float32))
    report = run_simulation(SimulationConfig(client_app=f"{path}:app", exchange="distill", probe_file=str(probe),
                                             nodes=3, rounds=3, seed=1))
    assert "warnings" not in report and report["probe"]["size"] == 100
    for node in report["nodes"]:
        assert set(node["bytes_sent_by_kind"]) == {"logits"} and node["refused_by_reason"] == {}
    # It trains: every node ends well above chance (0.1) and above where it started.
    assert all(n["history"][-1] > max(0.25, n["history"][0]) for n in report["nodes"])


def test_without_hooks_distillation_falls_back_to_weights_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="manymodels"):
        report = run_simulation(SimulationConfig(client_app=NUMPY_APP, exchange="distill", nodes=2, rounds=1))
    warnings = [r.getMessage() for r in caplog.records if r.name == "manymodels"]
    assert len(warnings) == 1 and "falls back to weight exchange" in warnings[0] and "docs/FLOWER.md" in warnings[0]
    assert report["warnings"] == [warnings[0].removeprefix("warning: ")]
    assert set(report["nodes"][0]["bytes_sent_by_kind"]) == {"weights"}
    with pytest.raises(FlowerError, match="cannot predict; add the optional hook"):
        FlowerLearner(NUMPY_APP).predict(np.zeros((1, 1, 8, 8)))


def test_message_api_hooks(tmp_path):
    path = _app_file(tmp_path, "query_app", """
        import numpy as np
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
        from flwr.clientapp import ClientApp
        app = ClientApp()

        def Net():
            return {"w": np.ones((4, 3), dtype=np.float32)}

        @app.train()
        def train(msg, context):
            return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}),
                           reply_to=msg)

        @app.query("predict")
        def predict(msg, context):
            w = msg.content["arrays"]["w"].numpy()
            x = msg.content["inputs"]["x"].numpy()
            return Message(RecordDict({"predictions": ArrayRecord({"logits": Array(x @ w)})}), reply_to=msg)

        @app.train("distill")
        def distill(msg, context):
            w = msg.content["arrays"]["w"].numpy() * msg.content["config"]["temperature"]
            assert msg.content["probe"]["target"].numpy().shape == (2, 3)
            return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w)})}), reply_to=msg)
    """)
    learner = FlowerLearner(f"{path}:app")
    assert learner.supports_predict and learner.supports_distill
    assert learner.predict(np.ones((2, 4), dtype=np.float32)).tolist() == [[4, 4, 4], [4, 4, 4]]
    learner.distill(np.ones((2, 4), dtype=np.float32), np.zeros((2, 3), dtype=np.float32), 2.0, 1)
    assert learner.get_weights()[0].tolist() == [[2, 2, 2]] * 4


# --- Flower strategies as rules -----------------------------------------------------------------

def _inputs(n=9, seed=0):
    rng = np.random.default_rng(seed)
    return [([rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)],
             float(rng.integers(10, 200))) for _ in range(n)]


@pytest.mark.parametrize("flower, ours", [
    ("flwr:FedAvg", "fedavg"),
    ("flwr:FedMedian", "median"),
    ("flwr:FedTrimmedAvg:beta=0.2", "trimmed:0.2"),
    ("flwr:Krum:num_malicious_clients=2", "krum:2"),
    ("flwr:Krum", "krum:0"),
    ("flwr:MultiKrum:num_malicious_clients=1:num_clients_to_keep=4", "multikrum:1:4"),
    ("flwr:Bulyan:num_malicious_clients=1", "bulyan:1"),
    ("flwr:FedProx:proximal_mu=0.1", "fedavg"),
    ("flwr:FedAvgM", "fedavg"),  # no server learning rate or momentum: plain FedAvg
])
def test_flower_strategies_give_the_same_result_as_our_rules(flower, ours):
    for seed in range(3):
        results = _inputs(seed=seed)
        before = [[a.copy() for a in update] for update, _ in results]
        got = get_rule(flower)(results, reference=results[0][0])
        want = get_rule(ours)(results, reference=results[0][0])
        assert [a.dtype for a in got] == [a.dtype for a in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
        assert all(np.array_equal(a, b) for (update, _), old in zip(results, before) for a, b in zip(update, old))


def test_server_optimizers_keep_state_per_rule_like_a_flower_server():
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdam

    first, second = _inputs(seed=1), _inputs(seed=2)
    reference = first[0][0]
    rule = get_rule("flwr:FedAdam:eta=0.01")
    assert rule.needs_reference and not get_rule("flwr:FedAvg").needs_reference
    mine = [rule(first, reference=reference), rule(second, reference=second[0][0])]

    flower = FedAdam(initial_parameters=ndarrays_to_parameters(reference), eta=0.01)
    theirs = []
    for server_round, results in enumerate((first, second), start=1):
        fit = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(u), int(w), {})) for u, w in results]
        theirs.append(parameters_to_ndarrays(flower.aggregate_fit(server_round, fit, [])[0]))
    for ours, flwr_out in zip(mine, theirs):
        for a, b in zip(ours, flwr_out):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    fresh = get_rule("flwr:FedAdam:eta=0.01")(second, reference=second[0][0])  # a new rule: no state
    assert not np.allclose(fresh[0], mine[1][0])
    for spec in ("flwr:FedYogi", "flwr:FedAdagrad:eta=0.05", "flwr:FedAvgM:server_momentum=0.9"):
        out = get_rule(spec)(first, reference=reference)
        assert [a.shape for a in out] == [a.shape for a in reference] and out[0].dtype == np.float32


def test_unknown_or_unsupported_strategy_is_a_clear_error():
    with pytest.raises(RuleError, match=r"unknown Flower strategy 'Nope'; supported: flwr:FedAvg, flwr:FedMedian, "
                                        r"flwr:FedTrimmedAvg, flwr:Krum, flwr:MultiKrum, flwr:Bulyan, flwr:FedAvgM, "
                                        r"flwr:FedAdam, flwr:FedYogi, flwr:FedAdagrad, flwr:FedProx"):
        get_rule("flwr:Nope")
    with pytest.raises(RuleError, match="QFedAvg is not supported as a rule .*needs each client's training loss"):
        get_rule("flwr:QFedAvg")
    with pytest.raises(RuleError, match="parameters are key=value"):
        get_rule("flwr:FedTrimmedAvg:0.2")
    with pytest.raises(RuleError, match="has no parameter 'f'"):
        get_rule("flwr:Krum:f=1")
    with pytest.raises(RuleError, match=r"beta=0.7 is not in \[0, 0.5\)"):
        get_rule("flwr:FedTrimmedAvg:beta=0.7")
    with pytest.raises(RuleError, match="lacks parameter proximal_mu"):
        get_rule("flwr:FedProx")
    assert get_rule("flwr:fedtrimmedavg").spec == "flwr:FedTrimmedAvg:beta=0.2"
    assert "needs n >= 4f+3 = 7" in check_inputs("flwr:Bulyan:num_malicious_clients=1", 6)
    with pytest.raises(SpecError, match="unknown Flower strategy 'Nope'"):
        run_simulation(SimulationConfig(rule="flwr:Nope", rounds=1))
    with pytest.raises(SpecError, match="proximal term runs in a Flower client.*needs --client-app"):
        run_simulation(SimulationConfig(rule="flwr:FedProx:proximal_mu=0.1", rounds=1))


def test_flower_strategies_are_listed():
    rows = {row["name"]: row for row in list_rules()}
    assert rows["flwr:FedTrimmedAvg"]["params"] == [
        {"name": "beta", "type": "float", "domain": "in [0, 0.5)", "default": 0.2}]
    assert rows["flwr:FedAdam"]["needs_reference"] and "one rule per node" in rows["flwr:FedAdam"]["description"]
    assert rows["flwr:FedProx"]["source"].startswith("flwr ")
    json.dumps(list_rules())


def test_cli_lists_flower_strategies_and_runs_a_flower_client(cli):
    listed = {row["name"] for row in json.loads(cli("rules", "--json").stdout)}
    assert {"flwr:FedAvg", "flwr:Krum", "flwr:FedAdam", "flwr:FedProx"} <= listed and "fedavg" in listed
    out = cli("simulate", "--nodes", "2", "--rounds", "1", "--client-app", MESSAGE_APP, "--run-config", "lr=0.02",
              "--rule", "flwr:FedMedian", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["config"]["run_config"] == "lr=0.02" and report["config"]["rule"] == "flwr:FedMedian"
    bad = cli("simulate", "--client-app", "no_such_module:app", "--rounds", "1")
    assert bad.returncode == 2 and "cannot import client app no_such_module" in bad.stderr
    assert "Traceback" not in bad.stderr


# --- loading errors -----------------------------------------------------------------------------

def test_loading_errors_are_one_line(tmp_path):
    with pytest.raises(FlowerError, match="takes MODULE:ATTR or FILE.py:ATTR"):
        load_client_app("just_a_module")
    with pytest.raises(FlowerError, match="does not exist"):
        load_client_app(f"{tmp_path}/missing.py:app")
    with pytest.raises(FlowerError, match="has no attribute nope"):
        load_client_app(f"{NUMPY_APP[:-4]}:nope")
    path = _app_file(tmp_path, "no_model_app", """
        from flwr.clientapp import ClientApp
        app = ClientApp()

        @app.train()
        def train(msg, context):
            raise KeyError("local-epochs")
    """)
    with pytest.raises(FlowerError, match=r"a Message-API app has no get_parameters, and its module has no Net"
                                          r".*:MyModel"):
        FlowerLearner(f"{path}:app")
    crash = _app_file(tmp_path, "crash_app", """
        from flwr.app import ArrayRecord
        from flwr.clientapp import ClientApp
        import numpy as np
        app = ClientApp()

        def Net():
            return [np.zeros(2)]

        @app.train()
        def train(msg, context):
            return context.run_config["local-epochs"]
    """)
    learner = FlowerLearner(f"{crash}:app")
    with pytest.raises(FlowerError, match=r"failed on train: KeyError: 'local-epochs' \(crash_app.py:\d+\)"):
        learner.fit(1)
    with pytest.raises(SpecError, match="failed on train: KeyError"):
        run_simulation(SimulationConfig(client_app=f"{crash}:app", nodes=2, rounds=1))
    with pytest.raises(SpecError, match="--run-config is the run config of a Flower client; give --client-app too"):
        run_simulation(SimulationConfig(run_config="lr=0.1", rounds=1))
    with pytest.raises(SpecError, match="labelflip poisons the simulator's dataset"):
        run_simulation(SimulationConfig(client_app=NUMPY_APP, attacks=("labelflip:0.25",)))
    with pytest.raises(SpecError, match="--exchange synthetic needs the built-in datasets"):
        run_simulation(SimulationConfig(client_app=NUMPY_APP, exchange="synthetic"))


@pytest.mark.multiprocess  # a fresh interpreter
def test_importing_the_cli_and_the_adapter_does_not_import_flower():
    code = ("import sys, manymodels.cli.main, manymodels.node.learning.flower, manymodels.aggregation.flower, "
            "manymodels.node.sim.simulator; assert 'flwr' not in sys.modules, 'flwr imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
