import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items):
    for item in items:
        if "cli" in item.fixturenames:  # it starts the console script in a process of its own
            item.add_marker(pytest.mark.multiprocess)


@pytest.fixture
def cli(tmp_path):
    """Run the installed `manymodels` console script as a user would (marks the test `multiprocess`)."""
    exe = Path(sys.executable).parent / "manymodels"

    def run(*args, timeout=120, env=None):
        return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, env={**os.environ, "COLUMNS": "200", **(env or {})})
    return run


@pytest.fixture
def without_ray(tmp_path) -> dict:
    """The environment of a process where `import ray` fails, as where the extra is not installed."""
    hidden = tmp_path / "no_ray"
    hidden.mkdir()
    (hidden / "ray.py").write_text("raise ImportError('No module named ray')\n")
    return {"PYTHONPATH": os.pathsep.join([str(hidden), *filter(None, [os.environ.get("PYTHONPATH")])])}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train with one torch thread, as a daemon's worker process does: local-only baselines computed
    in the test process then give identical numbers."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_cluster():
    """(ray, a Ray cluster of two Ray nodes of one CPU each), every Ray process on 127.0.0.1."""
    from manymodels.node.sim.ray_backend import import_ray
    from manymodels.node.spec import SpecError

    try:
        ray = import_ray(loopback=True)
    except SpecError:
        pytest.skip("Ray is not installed: pip install 'manymodels[ray]'")
    from ray.cluster_utils import Cluster

    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    except Exception as exc:  # noqa: BLE001 - whatever stops Ray starting here is the reason to skip
        pytest.skip(f"Ray cannot start a cluster here: {exc}")
    yield ray, cluster
    cluster.shutdown()
