"""The asynchronous schedule (--schedule async): every node on its own clock, stragglers and churn,
real training and signed messages on the memory network's virtual time."""
import copy
import json

import numpy as np
import pytest

from manymodels.node.sim.clocks import BASE_STEP_MS, ClockError, Clocks, parse_speeds
from manymodels.node.sim.simulator import SimulationConfig, run_simulation
from manymodels.node.sim.spec import SimulationSpec
from manymodels.node.spec import SpecError

SMALL = SimulationConfig(nodes=5, rounds=12, model="logreg", partition="dirichlet:0.3", schedule="async",
                         speeds="slow:0.2:10", seed=2)  # one node of five takes 10 s a step, the others 1 s


def _without_wall_time(report):
    report = copy.deepcopy(report)
    del report["summary"]["wall_seconds"]
    return report


@pytest.fixture(scope="module")
def straggler():
    return run_simulation(SMALL)


@pytest.mark.slow
def test_a_slow_node_does_not_stall_the_fast_ones(straggler):
    nodes, at = straggler["nodes"], straggler["history_ms"]
    assert at == [1000.0 * (r + 1) for r in range(SMALL.rounds)]
    slow = [n for n in nodes if n["step_ms"] == 10 * BASE_STEP_MS]
    fast = [n for n in nodes if n["step_ms"] == BASE_STEP_MS]
    assert len(slow) == 1 and len(fast) == 4
    assert slow[0]["local_steps"] == 1 and slow[0]["first_publish_ms"] == 10_000
    assert all(n["local_steps"] == SMALL.rounds for n in fast)  # one step a second: nobody waited
    # before the slow node's first model goes out (10 s), the fast ones learned from each other past
    # what each reaches alone in all 12 epochs; the slow one had not moved
    before = at.index(9000.0)
    assert np.mean([n["history"][before] for n in fast]) > np.mean([n["local_only_accuracy"] for n in fast]) + 0.1
    assert np.mean([n["history"][before] for n in fast]) > np.mean([n["history"][0] for n in fast]) + 0.2
    assert len(set(slow[0]["history"][:before + 1])) == 1
    assert slow[0]["history"][-1] > slow[0]["history"][0] + 0.2  # its one fold took the others' models


@pytest.mark.slow
def test_same_seed_same_report_with_churn_loss_and_uneven_speeds():
    config = SimulationConfig(nodes=4, rounds=6, model="logreg", schedule="async", speeds="lognormal:0.5",
                              churn="random:3:1", loss=0.1, seed=5)
    first = run_simulation(config)
    assert _without_wall_time(run_simulation(config)) == _without_wall_time(first)
    assert first["config"]["schedule"] == "async" and first["config"]["churn"] == "random:3:1"
    assert len({n["step_ms"] for n in first["nodes"]}) == 4 and any(n["away_ms"] > 0 for n in first["nodes"])
    assert all(len(n["history"]) == len(n["bytes_sent_per_round"]) == config.rounds for n in first["nodes"])
    assert first["summary"]["messages_dropped"] > 0


@pytest.mark.slow
def test_a_node_away_receives_nothing_and_its_neighbours_carry_on(tmp_path):
    churn = tmp_path / "churn.csv"
    churn.write_text("node,leave_ms,return_ms\n1,2000,6000\n")
    report = run_simulation(SimulationConfig(nodes=4, rounds=8, model="logreg", schedule="async", churn=str(churn)))
    away, others = report["nodes"][1], [n for i, n in enumerate(report["nodes"]) if i != 1]
    # it stepped at 1 s, left at 2 s (its step then lost), came back at 6 s and stepped at 7 and 8 s
    assert away["local_steps"] == 3 and away["away_ms"] == 4000
    assert all(n["local_steps"] == 8 for n in others)
    # the three others' models of 2, 3, 4 and 5 s reached it while it was away: all dropped, none folded
    assert report["summary"]["messages_dropped"] == 3 * 4
    assert len(set(away["history"][:6])) == 1  # its model from 1 s to 6 s did not change
    assert away["bytes_sent_per_round"][1:6] == [{}] * 5
    assert all(all(n["bytes_sent_per_round"]) for n in others)


@pytest.mark.slow
def test_an_async_network_learns_what_its_nodes_cannot_alone():
    report = run_simulation(SimulationConfig(nodes=6, rounds=10, model="logreg", partition="dirichlet:0.3",
                                             schedule="async", speeds="lognormal:0.5", lr=0.03, seed=3))
    s = report["summary"]
    assert s["mean_accuracy"] > s["mean_local_only_accuracy"] + 0.15
    assert s["min_accuracy"] > s["mean_local_only_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    {"exchange": "distill"}, {"exchange": "synthetic"}, {"exchange": "mixed", "model": "logreg,mlp"},
    {"rule": "median"}])
def test_every_exchange_runs_on_its_own_clock(options):
    config = SimulationConfig(**{"nodes": 3, "rounds": 3, "model": "logreg", "schedule": "async",
                                 "speeds": "slow:0.34:2", **options})
    report = run_simulation(config)
    assert all(len(n["history"]) == 3 and n["messages_accepted"] > 0 for n in report["nodes"])
    assert sorted(n["local_steps"] for n in report["nodes"]) == [1, 3, 3]


@pytest.mark.slow
def test_a_synchronous_round_lasts_as_long_as_its_slowest_node():
    report = run_simulation(SimulationConfig(nodes=4, rounds=2, model="logreg", speeds="slow:0.25:10"))
    assert report["history_ms"] == [10_000.0, 20_000.0]
    assert "step_ms" not in report["nodes"][0]  # the per-node clock numbers are the async schedule's


def test_speeds_from_a_trace_file(tmp_path):
    (tmp_path / "t.csv").write_text("node,step_ms\n0,100\n1,200\n1,300\n")
    (tmp_path / "t.json").write_text(json.dumps([100, [200, 300]]))
    for name in ("t.csv", "t.json"):
        clocks = Clocks(parse_speeds(str(tmp_path / name), 2, 1, 0))
        assert [clocks.step_ms(1, k) for k in range(3)] == [200, 300, 200]  # a node's steps in turn, cycled
        assert clocks.barrier_ms(2) == [200.0, 500.0]
    assert parse_speeds("slow:0.5:4", 4, 2, 0).count((8 * BASE_STEP_MS,)) == 2  # 2 local epochs a step
    with pytest.raises(ClockError, match="nodes 0..2"):
        parse_speeds(str(tmp_path / "t.csv"), 3, 1, 0)


@pytest.mark.parametrize("change, message", [
    ({"speeds": "fast:2"}, "--speeds 'fast:2': expected same, lognormal"),
    ({"speeds": "lognormal:-1"}, "SIGMA >= 0"),
    ({"speeds": "slow:0:10"}, "FRACTION in"),
    ({"speeds": "missing.csv"}, "cannot read speed trace"),
    ({"schedule": "lockstep"}, "--schedule is sync or async"),
    ({"schedule": "sync", "churn": "random:1:1"}, "--churn needs --schedule async"),
    ({"churn": "random:1"}, "random:UP_S:DOWN_S"),
    ({"churn": "churn.txt"}, "--churn 'churn.txt'"),
])
def test_bad_schedule_options_are_one_clear_error(change, message):
    with pytest.raises(SpecError, match=message):
        SimulationSpec.parse(SimulationConfig(**{"schedule": "async", **change}))


def test_overlapping_times_away_are_refused(tmp_path):
    churn = tmp_path / "churn.csv"
    churn.write_text("0,1000,5000\n0,4000,6000\n")
    with pytest.raises(SpecError, match="node 0's times away overlap"):
        SimulationSpec.parse(SimulationConfig(schedule="async", churn=str(churn)))


def test_simulate_async_from_the_command_line(cli, tmp_path):
    out = cli("simulate", "--nodes", "3", "--rounds", "3", "--model", "logreg", "--schedule", "async",
              "--speeds", "slow:0.34:3", "--report", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    assert "virtual time 3 s (async)" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["history_ms"] == [1000.0, 2000.0, 3000.0]
    assert sorted(n["local_steps"] for n in report["nodes"]) == [1, 3, 3]
    bad = cli("simulate", "--rounds", "1", "--schedule", "async", "--speeds", "lognormal:x")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --speeds 'lognormal:x'")
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
