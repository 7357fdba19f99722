import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(tmp_path):
    """Run the installed `manymodels` console script as a user would."""
    exe = Path(sys.executable).parent / "manymodels"

    def run(*args, timeout=120, env=None):
        return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, env={**os.environ, "COLUMNS": "200", **(env or {})})
    return run
