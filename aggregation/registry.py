"""Rules by name: the one place a rule spec is parsed; built-ins, Flower's strategies under `flwr:` (through
the adapter in flower.py) and plugins from the `manymodels.rules` entry points; input checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from . import flower
from . import logits as _logits
from . import weights as _weights
from .base import (NDArrays, Param, RuleError, RuleSpec, bind_params, entry_point_source, given_params,
                   load_plugin)

ENTRY_POINT_GROUP = "manymodels.rules"
KINDS = ("weights", "logits")


@dataclass(frozen=True)
class Rule:
    """A rule with its parameters bound; call it on inputs. Build one with `get_rule(spec)`."""

    spec: str  # canonical: every parameter written out, e.g. "gossip" -> "gossip:0.5"
    params: dict[str, int | float] = field(hash=False)
    min_inputs: int  # the fewest inputs (the node's own included) the rule works with
    definition: RuleSpec = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def kind(self) -> str:
        return self.definition.kind

    @property
    def needs_reference(self) -> bool:
        return self.definition.needs_reference

    @property
    def description(self) -> str:
        return self.definition.description

    @property
    def fn(self) -> Any:
        return self.definition.fn

    @property
    def client_config(self) -> dict[str, Any]:
        """What this rule adds to each client's fit config, as a Flower server would (FedProx:
        {"proximal_mu": mu}); {} for a rule that runs on the aggregating side only."""
        return {key: self.params[key] for key in self.definition.client_params}

    def __call__(self, inputs: list, reference: NDArrays | None = None) -> Any:
        """Weights rules: `rule(results, reference=None)`; logits rules: `rule(logits)`."""
        reason = check_inputs(self, len(inputs))
        if reason:
            raise RuleError(reason)
        if self.kind == "logits":
            if reference is not None:
                raise RuleError(f"{self.spec} is a logits rule and takes no reference")
            _check_same(inputs, "logit matrix", ndim=2)
            return self.fn(inputs, **self.params)
        if self.needs_reference and reference is None:
            raise RuleError(f"{self.spec} needs the node's own weights as reference=")
        _check_results(inputs, reference)
        return self.fn(inputs, reference, **self.params)


def _layout(update: NDArrays, what: str) -> list[tuple]:
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in update):
        raise RuleError(f"{what} must be a list of real-valued numpy arrays")
    return [(a.shape, a.dtype) for a in update]


def _check_results(results: list, reference: NDArrays | None) -> None:
    expected = _layout(results[0][0], "update 0")
    for i, (update, weight) in enumerate(results):
        if _layout(update, f"update {i}") != expected:
            raise RuleError(f"update {i} has tensors {_layout(update, '')}, update 0 has {expected}")
        if not (math.isfinite(weight) and weight >= 0):
            raise RuleError(f"update {i} has weight {weight}; weights must be finite and >= 0")
    if reference is not None and _layout(reference, "reference") != expected:
        raise RuleError(f"reference has tensors {_layout(reference, '')}, the updates have {expected}")


def _check_same(arrays: list, what: str, ndim: int) -> None:
    first = arrays[0]
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or a.ndim != ndim or a.shape != first.shape:
            raise RuleError(f"every {what} must be a {ndim}-d numpy array of shape {np.shape(first)}; #{i} is not")


def check_inputs(rule: Rule | str, n: int) -> str | None:
    """None if `rule` (a Rule or a spec) can aggregate n inputs (the node's own included), else why not."""
    rule = get_rule(rule) if isinstance(rule, str) else rule
    if n < 1:
        return f"{rule.spec} got no inputs to aggregate"
    if n < rule.min_inputs:
        text = rule.definition.min_inputs_text
        formula = f"{text} = " if text else ""
        return f"{rule.spec} needs n >= {formula}{rule.min_inputs} inputs, got n={n}"
    return None


_F = Param("f", int, ">= 0", lambda v: v >= 0)  # the number of Byzantine inputs tolerated


def after_bans(rule: Rule, banned: int) -> Rule:
    """`rule` for a node that has already cut off `banned` Byzantine peers: a rule built to
    tolerate f of them among its inputs has at most f - banned left to tolerate, and so needs
    fewer inputs (Bulyan: 4f+3). Rules without a parameter named f are returned as they are."""
    f = rule.params.get("f")
    if not banned or not isinstance(f, int) or not f:
        return rule
    try:
        return _bind(rule.definition, {**rule.params, "f": max(0, f - banned)}, rule.spec)
    except RuleError:  # a plugin whose f may not go that low: keep it as it is
        return rule


BUILTINS: dict[str, RuleSpec] = {
    s.name: s
    for s in (
        RuleSpec("fedavg", "weights", _weights.fedavg, description="weighted mean of the updates (FedAvg)",
                 coefficients=_weights.fedavg_coefficients),
        RuleSpec("median", "weights", _weights.median, description="coordinate-wise median"),
        RuleSpec(
            "trimmed", "weights", _weights.trimmed,
            (Param("beta", float, "in [0, 0.5)", lambda v: 0 <= v < 0.5),),
            "coordinate-wise mean after cutting a fraction beta at each end", example="trimmed:0.2",
        ),
        RuleSpec(
            "krum", "weights", _weights.krum, (_F,),
            "the update closest to its n-f-2 nearest neighbours (Krum)",
            min_inputs=lambda f: 2 * f + 3, min_inputs_text="2f+3", example="krum:1",
        ),
        RuleSpec(
            "multikrum", "weights", _weights.multikrum, (_F, Param("m", int, ">= 1", lambda v: v >= 1)),
            "weighted mean of the m updates with the best Krum scores (Multi-Krum)",
            min_inputs=lambda f, m: max(2 * f + 3, m), min_inputs_text="max(2f+3, m)", example="multikrum:1:3",
        ),
        RuleSpec(
            "bulyan", "weights", _weights.bulyan, (_F,),
            "Bulyan over Krum: Krum-selected updates, then a coordinate-wise trimmed mean around the median",
            min_inputs=lambda f: 4 * f + 3, min_inputs_text="4f+3", example="bulyan:1",
        ),
        RuleSpec(
            "gossip", "weights", _weights.gossip,
            (Param("alpha", float, "in [0, 1]", lambda v: 0 <= v <= 1, default=0.5),),
            "(1-alpha) * own weights + alpha * mean of the neighbours' updates",
            needs_reference=True, example="gossip:0.5", coefficients=_weights.gossip_coefficients,
        ),
        RuleSpec(
            "clippedgossip", "weights", _weights.clippedgossip, (Param("tau", float, "> 0", lambda v: v > 0),),
            "own weights plus the mean of the differences to each input, each clipped to norm tau (ClippedGossip)",
            needs_reference=True, example="clippedgossip:1.0",
        ),
        RuleSpec("logit-mean", "logits", _logits.logit_mean, description="elementwise mean of the logits"),
        RuleSpec("logit-median", "logits", _logits.logit_median, description="elementwise median of the logits"),
        RuleSpec(
            "logit-trimmed", "logits", _logits.logit_trimmed,
            (Param("beta", float, "in [0, 0.5)", lambda v: 0 <= v < 0.5),),
            "elementwise mean of the logits after cutting a fraction beta at each end", example="logit-trimmed:0.2",
        ),
        RuleSpec("logit-probmean", "logits", _logits.logit_probmean,
                 description="log of the mean of the probabilities (arithmetic ensemble of soft labels)"),
        RuleSpec("logit-confidence", "logits", _logits.logit_confidence,
                 description="per sample, the mean of the logits weighted by each model's top probability"),
    )
}


def _load(ep: EntryPoint) -> RuleSpec:
    """The RuleSpec behind a plugin entry point; any failure becomes a RuleError saying why."""
    obj = load_plugin(ep, "rule", RuleError)
    if isinstance(obj, RuleSpec):
        spec = obj
    elif callable(obj):
        spec = RuleSpec(ep.name, "weights", obj, description=(obj.__doc__ or "").strip().split("\n")[0])
    else:
        raise RuleError(f"rule plugin '{ep.name}' from {entry_point_source(ep)} is neither a RuleSpec nor a function")
    if spec.name != ep.name or spec.kind not in KINDS:
        raise RuleError(
            f"rule plugin '{ep.name}' from {entry_point_source(ep)} is a RuleSpec named '{spec.name}' of kind "
            f"'{spec.kind}'; the name must be the entry point's and the kind one of {', '.join(KINDS)}"
        )
    return spec


def _plugins() -> list[EntryPoint]:
    # Read afresh on every call, so plugins installed while a node runs (or a test's sys.path) show up.
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _find(name: str) -> RuleSpec:
    if name in BUILTINS:
        return BUILTINS[name]
    plugins = _plugins()
    for ep in plugins:
        if ep.name == name:
            return _load(ep)
    available = ", ".join([*BUILTINS, *(ep.name for ep in plugins)])
    raise RuleError(f"unknown rule '{name}'; available: {available}")


def _bind(definition: RuleSpec, given: dict[str, Any], text: str) -> Rule:
    """The Rule with the given parameter values (written in `text`, or numbers), defaults for the rest."""
    params = bind_params(definition, given, text, "rule", RuleError)
    try:
        min_inputs = definition.min_inputs(**params)
    except Exception as exc:  # plugin code
        raise RuleError(f"rule '{text}': min_inputs failed: {type(exc).__name__}: {exc}") from exc
    return Rule(definition.write(params), params, min_inputs, definition)


def get_rule(spec: str) -> Rule:
    """The rule named by `spec`: "name", "name:p1" or "name:p1:p2", e.g. "trimmed:0.2", "multikrum:2:5";
    or a Flower strategy, "flwr:NAME[:key=value...]" (a new Rule on every call: some keep state).
    The one place a spec is parsed: everything else passes the Rule on."""
    text = spec.strip()
    prefix = flower.PREFIX if text.startswith(flower.PREFIX) else ""
    name, *raw = text[len(prefix):].split(":")
    definition = flower.find(name) if prefix else _find(name)
    return _bind(definition, given_params(definition, raw, spec, "rule", RuleError), spec)


def _describe(spec: RuleSpec | None, name: str, source: str, error: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "kind": spec.kind if spec else None,
        "params": [p.to_json() for p in (spec.params if spec else ())],
        "description": spec.description if spec else "",
        "needs_reference": spec.needs_reference if spec else None,
        "source": source,
        "error": error,
    }


def list_rules() -> list[dict[str, Any]]:
    """Every rule, JSON-ready: built-ins, Flower's strategies ("flwr:..."), then plugins; a plugin that
    cannot be used has an "error"."""
    rows = [_describe(spec, name, "builtin") for name, spec in BUILTINS.items()]
    source = flower.source()
    rows += [_describe(spec, spec.name, source) for spec in flower.definitions()]
    seen = set(BUILTINS)
    for ep in _plugins():
        if ep.name in seen:
            rows.append(_describe(None, ep.name, entry_point_source(ep), f"the name '{ep.name}' is already taken"))
            continue
        seen.add(ep.name)
        try:
            rows.append(_describe(_load(ep), ep.name, entry_point_source(ep)))
        except RuleError as exc:
            rows.append(_describe(None, ep.name, entry_point_source(ep), str(exc)))
    return rows
