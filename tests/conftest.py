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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train with one torch thread, as a daemon's worker process does: local-only baselines computed
    in the test process then give identical numbers."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
