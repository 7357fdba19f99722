"""Rules by name: spec parsing, input checks, built-ins and plugins from the `manymodels.rules` entry points."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from . import logits as _logits
from . import weights as _weights
from .base import NDArrays, RuleError

ENTRY_POINT_GROUP = "manymodels.rules"
FLOWER_PREFIX = "flwr:"  # "flwr:FedTrimmedAvg:beta=0.2": Flower's strategies, see aggregation/flower.py
KINDS = ("weights", "logits")
_COUNT = ("no", "one", "two", "three", "four")


@dataclass(frozen=True)
class Param:
    """One positional parameter of a rule spec (`name:p1:p2`)."""

    name: str
    type: type  # int or float
    domain: str  # the valid values in words, for messages: "in [0, 0.5)", ">= 0"
    valid: Callable[[Any], bool] = lambda value: True
    default: int | float | None = None  # None: the parameter is required

    def describe(self) -> str:
        default = "" if self.default is None else f", default {self.default}"
        return f"{self.name} ({self.type.__name__} {self.domain}{default})"


def _one(**params: Any) -> int:
    return 1


@dataclass(frozen=True)
class RuleSpec:
    """A rule as the registry knows it; a plugin's entry point loads to one of these."""

    name: str
    kind: str  # "weights" or "logits"
    fn: Callable[..., Any]  # fn(results, reference, **params) or fn(logits, **params)
    params: tuple[Param, ...] = ()
    description: str = ""
    needs_reference: bool = False
    min_inputs: Callable[..., int] = _one  # called with the parameters as keywords
    min_inputs_text: str = ""  # min_inputs as a formula for messages, e.g. "4f+3"
    example: str = ""  # a valid spec for messages; by default the name and parameter names

    def usage(self) -> str:
        example = self.example or ":".join([self.name, *(f"<{p.name}>" for p in self.params)])
        if not self.params:
            return f"{self.name} takes no parameters: {example}"
        plural = "s" if len(self.params) > 1 else ""
        described = " and ".join(p.describe() for p in self.params)
        count = _COUNT[len(self.params)] if len(self.params) < len(_COUNT) else len(self.params)
        return f"{self.name} takes {count} parameter{plural} {described}: {example}"


@dataclass(frozen=True)
class Rule:
    """A rule with its parameters bound; call it on inputs. Build one with `get_rule(spec)`."""

    spec: str  # canonical: every parameter written out, e.g. "gossip" -> "gossip:0.5"
    name: str
    kind: str
    params: dict[str, int | float] = field(hash=False)
    needs_reference: bool
    min_inputs: int  # the fewest inputs (the node's own included) the rule works with
    description: str
    fn: Callable[..., Any] = field(repr=False, compare=False)
    min_inputs_text: str = field(default="", repr=False, compare=False)

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
        formula = f"{rule.min_inputs_text} = " if rule.min_inputs_text else ""
        return f"{rule.spec} needs n >= {formula}{rule.min_inputs} inputs, got n={n}"
    return None


_F = Param("f", int, ">= 0", lambda v: v >= 0)  # the number of Byzantine inputs tolerated


def after_bans(rule: Rule, banned: int) -> Rule:
    """`rule` for a node that has already cut off `banned` Byzantine peers: a rule built to
    tolerate f of them among its inputs has at most f - banned left to tolerate, and so needs
    fewer inputs (Bulyan: 4f+3). Rules without a parameter named f are returned as they are."""
    f = rule.params.get("f")
    if not banned or not isinstance(f, int) or not f or rule.spec.startswith(FLOWER_PREFIX):
        return rule
    params = {**rule.params, "f": max(0, f - banned)}
    try:
        return get_rule(":".join([rule.name, *(str(v) for v in params.values())]))
    except RuleError:  # a plugin whose f may not go that low: keep it as it is
        return rule


BUILTINS: dict[str, RuleSpec] = {
    s.name: s
    for s in (
        RuleSpec("fedavg", "weights", _weights.fedavg, description="weighted mean of the updates (FedAvg)"),
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
            needs_reference=True, example="gossip:0.5",
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


def _source(ep: EntryPoint) -> str:
    return f"{ep.dist.name} ({ep.value})" if ep.dist else ep.value


def _load(ep: EntryPoint) -> RuleSpec:
    """The RuleSpec behind a plugin entry point; any failure becomes a RuleError saying why."""
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not take the built-ins down with it
        raise RuleError(f"rule plugin '{ep.name}' from {_source(ep)} failed to load: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, RuleSpec):
        spec = obj
    elif callable(obj):
        spec = RuleSpec(ep.name, "weights", obj, description=(obj.__doc__ or "").strip().split("\n")[0])
    else:
        raise RuleError(f"rule plugin '{ep.name}' from {_source(ep)} is neither a RuleSpec nor a function")
    if spec.name != ep.name or spec.kind not in KINDS:
        raise RuleError(
            f"rule plugin '{ep.name}' from {_source(ep)} is a RuleSpec named '{spec.name}' of kind "
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


def _parse(spec: RuleSpec, raw: list[str], text: str) -> dict[str, int | float]:
    if len(raw) > len(spec.params):
        raise RuleError(f"rule '{text}' has too many parameters; {spec.usage()}")
    values = {}
    for i, param in enumerate(spec.params):
        if i >= len(raw):
            if param.default is None:
                raise RuleError(f"rule '{text}' lacks parameter {param.name}; {spec.usage()}")
            values[param.name] = param.default
            continue
        try:
            value = param.type(raw[i])
        except ValueError:
            raise RuleError(f"rule '{text}': {param.name}={raw[i]!r} is not {param.type.__name__}; {spec.usage()}") from None
        if not (math.isfinite(value) and param.valid(value)):
            raise RuleError(f"rule '{text}': {param.name}={value} is not {param.domain}; {spec.usage()}")
        values[param.name] = value
    return values


def get_rule(spec: str) -> Rule:
    """The rule named by `spec`: "name", "name:p1" or "name:p1:p2", e.g. "trimmed:0.2", "multikrum:2:5";
    or a Flower strategy, "flwr:NAME[:key=value...]" (a new Rule on every call: some keep state)."""
    if spec.strip().startswith(FLOWER_PREFIX):
        from .flower import flower_rule

        return flower_rule(spec)
    name, *raw = spec.strip().split(":")
    found = _find(name)
    params = _parse(found, raw, spec)
    try:
        min_inputs = found.min_inputs(**params)
    except Exception as exc:  # plugin code
        raise RuleError(f"rule '{spec}': min_inputs failed: {type(exc).__name__}: {exc}") from exc
    return Rule(
        spec=":".join([name, *(str(v) for v in params.values())]),
        name=name,
        kind=found.kind,
        params=params,
        needs_reference=found.needs_reference,
        min_inputs=min_inputs,
        description=found.description,
        fn=found.fn,
        min_inputs_text=found.min_inputs_text,
    )


def _describe(spec: RuleSpec | None, name: str, source: str, error: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "kind": spec.kind if spec else None,
        "params": [
            {"name": p.name, "type": p.type.__name__, "domain": p.domain, "default": p.default}
            for p in (spec.params if spec else ())
        ],
        "description": spec.description if spec else "",
        "needs_reference": spec.needs_reference if spec else None,
        "source": source,
        "error": error,
    }


def list_rules() -> list[dict[str, Any]]:
    """Every rule, JSON-ready: built-ins, Flower's strategies ("flwr:..."), then plugins; a plugin that
    cannot be used has an "error"."""
    from .flower import list_flower_rules

    rows = [_describe(spec, name, "builtin") for name, spec in BUILTINS.items()] + list_flower_rules()
    seen = set(BUILTINS)
    for ep in _plugins():
        if ep.name in seen:
            rows.append(_describe(None, ep.name, _source(ep), f"the name '{ep.name}' is already taken"))
            continue
        seen.add(ep.name)
        try:
            rows.append(_describe(_load(ep), ep.name, _source(ep)))
        except RuleError as exc:
            rows.append(_describe(None, ep.name, _source(ep), str(exc)))
    return rows
