"""Third-party rules through the `manymodels.rules` entry points, from a real *.dist-info on sys.path."""
from __future__ import annotations

import textwrap
import uuid

import numpy as np
import pytest

from manymodels.aggregation import RuleError, get_rule, list_rules

PLUGIN = """
    import numpy as np
    from manymodels.aggregation import Param, RuleSpec

    def scaled_mean(results, reference, *, scale, shift):
        '''scale * unweighted mean + shift'''
        return [scale * np.mean([u[i] for u, _ in results], axis=0) + shift for i in range(len(results[0][0]))]

    def plain(results, reference):
        '''Returns the first update.

        More text that is not the description.'''
        return [a.copy() for a in results[0][0]]

    def max_logit(logits):
        return np.max(logits, axis=0)

    RULE = RuleSpec(
        name="{p}scaled", kind="weights", fn=scaled_mean,
        params=(Param("scale", float, "> 0", lambda v: v > 0), Param("shift", int, "any", default=0)),
        description="scaled mean", min_inputs=lambda scale, shift: 2, example="{p}scaled:2.0",
        client_params=("shift",),
    )
    LOGITS = RuleSpec(name="{p}max", kind="logits", fn=max_logit, description="elementwise max")
    MISNAMED = RuleSpec(name="other", kind="weights", fn=plain)
    BADKIND = RuleSpec(name="{p}badkind", kind="pixels", fn=plain)
    NOT_A_RULE = 42
"""


def install(tmp_path, monkeypatch, entry_points: dict[str, str], modules: dict[str, str],
            group: str = "manymodels.rules") -> None:
    """Write a distribution (dist-info with METADATA and entry_points.txt) and its modules; put it on sys.path."""
    name = f"mm-plugin-{uuid.uuid4().hex[:8]}"
    dist_info = tmp_path / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    for module, source in modules.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A distribution with good and bad rules; returns the unique prefix of its names."""
    p = f"p{uuid.uuid4().hex[:8]}-"
    module, broken = f"mm_rules_{p[1:-1]}", f"mm_broken_{p[1:-1]}"
    install(
        tmp_path,
        monkeypatch,
        {
            f"{p}scaled": f"{module}:RULE",
            f"{p}plain": f"{module}:plain",
            f"{p}max": f"{module}:LOGITS",
            f"{p}broken": f"{broken}:RULE",
            f"{p}misnamed": f"{module}:MISNAMED",
            f"{p}badkind": f"{module}:BADKIND",
            f"{p}notarule": f"{module}:NOT_A_RULE",
            f"{p}missing": f"{module}:NO_SUCH_NAME",
            "fedavg": f"{module}:plain",
        },
        {module: PLUGIN.replace("{p}", p), broken: "raise RuntimeError('boom at import')\n"},
    )
    return p


def test_list_rules_shows_plugins_and_their_errors(plugin):
    rows = {(row["name"], row["source"] == "builtin"): row for row in list_rules()}
    scaled = rows[(f"{plugin}scaled", False)]
    assert scaled["kind"] == "weights" and scaled["description"] == "scaled mean" and scaled["error"] is None
    assert scaled["params"] == [
        {"name": "scale", "type": "float", "domain": "> 0", "default": None},
        {"name": "shift", "type": "int", "domain": "any", "default": 0},
    ]
    assert scaled["source"].startswith("mm-plugin-") and "mm_rules_" in scaled["source"]
    assert rows[(f"{plugin}plain", False)]["description"] == "Returns the first update."
    assert rows[(f"{plugin}max", False)]["kind"] == "logits"
    broken = rows[(f"{plugin}broken", False)]
    assert "failed to load: RuntimeError: boom at import" in broken["error"] and broken["kind"] is None
    assert "is a RuleSpec named 'other'" in rows[(f"{plugin}misnamed", False)]["error"]
    assert "kind 'pixels'" in rows[(f"{plugin}badkind", False)]["error"]
    assert "neither a RuleSpec nor a function" in rows[(f"{plugin}notarule", False)]["error"]
    assert "failed to load: AttributeError" in rows[(f"{plugin}missing", False)]["error"]
    assert rows[("fedavg", False)]["error"] == "the name 'fedavg' is already taken"
    assert rows[("fedavg", True)]["error"] is None


def test_get_rule_runs_plugins(plugin):
    results = [([np.array([1.0, 2.0])], 1), ([np.array([3.0, 6.0])], 5)]
    rule = get_rule(f"{plugin}scaled:2")
    assert rule.params == {"scale": 2.0, "shift": 0} and rule.spec == f"{plugin}scaled:2.0:0"
    assert rule.client_config == {"shift": 0} and get_rule("fedavg").client_config == {}
    np.testing.assert_allclose(rule(results)[0], [4.0, 8.0])
    np.testing.assert_allclose(get_rule(f"{plugin}scaled:0.5:1")(results)[0], [2.0, 3.0])
    np.testing.assert_allclose(get_rule(f"{plugin}plain")(results)[0], [1.0, 2.0])
    np.testing.assert_allclose(get_rule(f"{plugin}max")([np.zeros((1, 2)), np.ones((1, 2))]), [[1.0, 1.0]])
    # The plugin's min_inputs and parameter checks apply like a built-in's.
    with pytest.raises(RuleError, match=f"{plugin}scaled:2.0:0 needs n >= 2 inputs, got n=1"):
        rule(results[:1])
    with pytest.raises(RuleError, match=rf"scale=-1.0 is not > 0; {plugin}scaled takes two parameters .*: {plugin}scaled:2.0"):
        get_rule(f"{plugin}scaled:-1")
    # Unknown names list the plugins, too.
    with pytest.raises(RuleError, match=f"unknown rule 'nope'; available: fedavg, .*{plugin}scaled"):
        get_rule("nope")


def test_a_broken_plugin_is_a_rule_error_and_the_builtins_still_work(plugin):
    with pytest.raises(RuleError, match=f"rule plugin '{plugin}broken' from mm-plugin-.* failed to load: RuntimeError: boom at import"):
        get_rule(f"{plugin}broken")
    with pytest.raises(RuleError, match="is a RuleSpec named 'other'"):
        get_rule(f"{plugin}misnamed")
    assert get_rule("fedavg").fn.__module__ == "manymodels.aggregation.weights"  # a plugin cannot shadow it
    assert get_rule("fedavg")([([np.array([1.0])], 1), ([np.array([3.0])], 3)])[0][0] == 2.5
