"""`simulate --backend ray`: a Ray cluster of two Ray nodes that the test starts on loopback, a
simulation whose shards land on both, and its report equal to the local engine's (all but wall
time); and the one line a user gets where Ray is not installed."""
import copy

import pytest

from manymodels.node.sim.ray_backend import RAY_MISSING, shard_indices, simulate_on_ray
from manymodels.node.sim.simulator import SimulationConfig, run_simulation
from manymodels.node.sim.spec import SimulationSpec
from manymodels.node.spec import SpecError

# Small, and with what could break equality across processes: lost messages (the network's generator),
# an omniscient attacker (ALIE reads honest models on the other shard) and a noise attacker (the attack
# context's generator)
CONFIG = dict(nodes=6, rounds=3, model="logreg", topology="random:3", loss=0.1, attacks=("alie:0.2", "gaussian:0.2"))


def _without_wall_time(report: dict) -> dict:
    report = copy.deepcopy(report)
    del report["summary"]["wall_seconds"]
    return report


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_shards_on_two_ray_nodes_give_the_local_report(ray_cluster, monkeypatch):
    ray, nodes = ray_cluster
    monkeypatch.setenv("RAY_ADDRESS", nodes.address)  # where `ray start` leaves it for --address auto
    config = SimulationConfig(backend="ray", address="auto", **CONFIG)
    on_ray, placement = simulate_on_ray(SimulationSpec.parse(config))

    assert len({shard["ray_node"] for shard in placement}) == 2  # the nodes ran on both Ray nodes
    assert sorted(i for shard in placement for i in shard["nodes"]) == list(range(CONFIG["nodes"]))
    assert {shard["address"] for shard in placement} == {"127.0.0.1"}
    assert _without_wall_time(on_ray) == _without_wall_time(run_simulation(SimulationConfig(**CONFIG)))
    assert on_ray["attackers"] and on_ray["summary"]["messages_dropped"] > 0  # the test covers what it says

    # every Ray process stayed on loopback: the GCS, both nodes' raylets, and this driver
    assert nodes.address.startswith("127.0.0.1:")
    ray.init(address=nodes.address, log_to_driver=False)
    try:
        assert [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]] == ["127.0.0.1"] * 2
        assert ray.util.get_node_ip_address() == "127.0.0.1"
    finally:
        ray.shutdown()


def test_shards_hold_every_node_once_and_the_attackers_together():
    spec = SimulationSpec.parse(SimulationConfig(**{**CONFIG, "nodes": 10, "attacks": ("gaussian:0.3",)}))
    shards = shard_indices(spec, 3)
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert set(spec.attackers) <= set(shards[0])
    assert [len(shard) for shard in shards] == [4, 3, 3]
    many = shard_indices(spec, 50)  # more CPUs than nodes: no empty shard
    assert len(many) <= 10 and all(many) and set(spec.attackers) == set(many[0])
    assert shard_indices(spec, 1) == [list(range(10))]


@pytest.mark.parametrize("options, words", [
    ({"backend": "spark"}, "unknown backend 'spark'"),
    ({"address": "auto"}, "--address is a Ray cluster's: it needs --backend ray"),
    ({"backend": "ray", "client_app": "app:client"}, "a Flower client app (--client-app) runs on --backend local"),
])
def test_backend_options_are_checked(options, words):
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")):
        SimulationSpec.parse(SimulationConfig(nodes=2, rounds=1, **options))


@pytest.mark.slow
def test_ray_backend_without_ray_is_one_line(cli, without_ray):
    """A real process where `import ray` fails, as where the extra is not installed."""
    result = cli("simulate", "--backend", "ray", "--nodes", "2", "--rounds", "1", env=without_ray)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {RAY_MISSING}"]
    assert not result.stdout
