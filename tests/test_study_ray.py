"""`study ... --backend ray`: a study's grid points as Ray tasks on a two-node Ray cluster that the test
starts on loopback (tests/conftest.py's ray_cluster), resumed from a results file as on the local
backend, with the local backend's results; and the one line a user gets where Ray is not installed."""
import json

import pytest

from manymodels.node.sim.ray_backend import RAY_MISSING
from manymodels.node.sim.spec import SimulationConfig
from manymodels.studies.homogeneity_study import HomogeneitySettings, homogeneity_study

# three points (seeds 0, 1, 2): one in the results file, two for the two Ray nodes
SETTINGS = HomogeneitySettings(widths=(8,), seeds=3, resamples=1, exchanges=("weights",))


def _study(results, on_point=None, **where):
    config = SimulationConfig(nodes=2, rounds=2, local_epochs=2, max_train=160, probe_size=40, partition="iid",
                              label_noise=0.2, **where)
    return homogeneity_study(config, SETTINGS, results, on_point)


def _without_grid(report):
    return {k: v for k, v in report.items() if k != "grid"}


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_a_study_resumed_on_two_ray_nodes_gives_the_local_results(ray_cluster, tmp_path):
    _, nodes = ray_cluster
    local = _study(tmp_path / "local.json")
    saved = json.loads((tmp_path / "local.json").read_text())
    (tmp_path / "ray.json").write_text(json.dumps({**saved, "points": saved["points"][:1]}))  # cut after one

    progress = []
    on_ray = _study(tmp_path / "ray.json", lambda k, n, point: progress.append((k, n, point["seed"])),
                    backend="ray", address=nodes.address)
    assert _without_grid(on_ray) == _without_grid(local)
    assert json.loads((tmp_path / "ray.json").read_text()) == saved  # every point kept, in the grid's order
    grid = on_ray["grid"]
    assert grid == {**grid, "points": 3, "run": 2, "resumed": 1}  # the point in the file was not resubmitted
    # the bar: the resumed point, then one step per task as it completes (in whatever order)
    assert [(k, n) for k, n, _ in progress] == [(1, 3), (2, 3), (3, 3)]
    assert progress[0][2] == 0 and {seed for *_, seed in progress[1:]} == {1, 2}
    assert len(grid["ray_nodes"]) == 2 and sum(n["points"] for n in grid["ray_nodes"].values()) == 2
    assert {n["address"] for n in grid["ray_nodes"].values()} == {"127.0.0.1"}
    assert nodes.address.startswith("127.0.0.1:")


@pytest.mark.slow
def test_a_study_on_ray_without_ray_is_one_line(cli, without_ray):
    """A real process where `import ray` fails, as where the extra is not installed."""
    result = cli("study", "homogeneity", "--quick", "--backend", "ray", env=without_ray)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {RAY_MISSING}"]
    assert not result.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_the_value_study_simulates_its_known_networks_on_ray(ray_cluster):
    """loo's and exact's networks as Ray tasks, mc then reading them: the local values and costs."""
    from manymodels.studies.value_study import ValueSettings, value_study

    _, nodes = ray_cluster
    settings = ValueSettings(methods=("loo", "exact", "mc"), permutations=3)

    def study(**where):
        return value_study(SimulationConfig(nodes=3, rounds=3, model="logreg", **where), settings)
    local, on_ray = study(), study(backend="ray", address=nodes.address)
    for report in (local, on_ray):
        for method in report["methods"].values():
            assert method["cost"].pop("seconds") > 0
    ray = on_ray.pop("ray")  # every network of 3 peers, one a task, over both Ray nodes
    assert ray["simulations"] == 7 and len(ray["ray_nodes"]) == 2
    assert on_ray == local and local["methods"]["exact"]["cost"]["simulations"] == 7
