"""Every example in the package's docstrings runs (doctest). The modules are found by walking the
folders of the packages pyproject.toml declares, so a new module is covered without being named
here, and every one must import: one that needs an optional dependency is listed in NEEDS_OPTIONAL
with the reason, and skipped only when that dependency is missing."""
import doctest
import importlib
import io
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDS_OPTIONAL: dict[str, tuple[str, str]] = {}  # module -> (the optional package, why it is imported at load)


def package_modules() -> list[str]:
    rooms = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    names = []
    for package, folder in rooms.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            names.append(".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


def test_the_walk_finds_every_room():
    found = {name.split(".")[1] for name in package_modules()}
    assert found == {"protocol", "aggregation", "node", "studies", "cli"}
    assert "manymodels.protocol.envelope" in package_modules()


@pytest.mark.parametrize("name", package_modules())
def test_docstring_examples_run(name):
    if name in NEEDS_OPTIONAL:
        pytest.importorskip(NEEDS_OPTIONAL[name][0], reason=NEEDS_OPTIONAL[name][1])
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
