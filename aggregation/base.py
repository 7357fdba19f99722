"""What the rule modules, the Flower adapter and the registry share (kept apart, so that none of them
imports the registry): the array types, the error, `RuleSpec`, a rule as the registry knows it, and
the parser of "name:p1:p2" specs with typed parameters (protocol/codecs.py parses codec specs with it)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any

import numpy as np

NDArrays = list[np.ndarray]  # one array per tensor, as in Flower
Results = list[tuple[NDArrays, float]]  # (update, weight), e.g. weight = number of examples
_COUNT = ("no", "one", "two", "three", "four")


class RuleError(ValueError):
    """A rule spec that does not parse, or inputs a rule cannot aggregate. The message says why."""


@dataclass(frozen=True)
class Param:
    """One parameter of a rule spec: `name:p1:p2`, or `name:key=p1:key=p2` (Flower's strategies)."""

    name: str
    type: type  # int or float
    domain: str  # the valid values in words, for messages: "in [0, 0.5)", ">= 0"
    valid: Callable[[Any], bool] = lambda value: True
    default: int | float | None = None  # None: the parameter is required

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type.__name__, "domain": self.domain, "default": self.default}

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
    example: str = ""  # a valid spec for messages; by default the name and the parameters' defaults
    named_params: bool = False  # parameters written key=value in any order, as Flower's strategies take them
    client_params: tuple[str, ...] = ()  # parameters the clients get in their fit config (FedProx's proximal_mu)
    # A linear rule: coefficients(weights, **params) -> each input's coefficient in the weighted sum of
    # the inputs the rule returns (from their weights alone, never their values); None: not linear.
    coefficients: Callable[..., list[float]] | None = None

    def write(self, values: dict[str, Any]) -> str:
        """The spec of this rule with these parameter values: "name:v1:v2" or "name:k1=v1:k2=v2"."""
        return write_spec(self, values)

    def usage(self) -> str:
        return spec_usage(self)


# A named thing with typed parameters, written "name:p1:p2" (or "name:k1=v1", `named_params`): a rule
# here, a codec in protocol/codecs.py. Anything with the attributes name, params, named_params and
# example; the functions below are the one parser and binder of such specs.


def write_spec(definition: Any, values: dict[str, Any]) -> str:
    return ":".join([definition.name, *(f"{k}={v}" if definition.named_params else str(v) for k, v in values.items())])


def spec_usage(definition: Any) -> str:
    params = definition.params
    example = definition.example or write_spec(definition, {p.name: f"<{p.name}>" if p.default is None else p.default
                                                            for p in params})
    if not params:
        return f"{definition.name} takes no parameters: {example}"
    plural = "s" if len(params) > 1 else ""
    described = " and ".join(p.describe() for p in params)
    count = _COUNT[len(params)] if len(params) < len(_COUNT) else len(params)
    return f"{definition.name} takes {count} parameter{plural} {described}: {example}"


def given_params(definition: Any, raw: list[str], text: str, what: str, error: type[ValueError]) -> dict[str, str]:
    """The parameters written in a spec, by name: by position, or key=value (`named_params`). `what`
    names the thing in messages ("rule", "codec"); `error` is raised."""
    usage = spec_usage(definition)
    if not definition.named_params:
        if len(raw) > len(definition.params):
            raise error(f"{what} '{text}' has too many parameters; {usage}")
        return {param.name: value for param, value in zip(definition.params, raw)}
    names = {param.name for param in definition.params}
    given: dict[str, str] = {}
    for item in filter(str.strip, raw):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise error(f"{what} '{text}': parameters are key=value; {usage}")
        if key not in names:
            raise error(f"{what} '{text}': {definition.name} has no parameter {key!r}; {usage}")
        if key in given:
            raise error(f"{what} '{text}' sets {key} twice")
        given[key] = value.strip()
    return given


def bind_params(definition: Any, given: dict[str, Any], text: str, what: str,
                error: type[ValueError]) -> dict[str, int | float]:
    """The given parameter values (written in `text`, or numbers), defaults for the rest, each
    checked against its domain."""
    params: dict[str, int | float] = {}
    for param in definition.params:
        if param.name not in given:
            if param.default is None:
                raise error(f"{what} '{text}' lacks parameter {param.name}; {spec_usage(definition)}")
            params[param.name] = param.default
            continue
        try:
            value = param.type(given[param.name])
        except ValueError:
            raise error(f"{what} '{text}': {param.name}={given[param.name]!r} is not {param.type.__name__}; "
                        f"{spec_usage(definition)}") from None
        if not (math.isfinite(value) and param.valid(value)):
            raise error(f"{what} '{text}': {param.name}={value} is not {param.domain}; {spec_usage(definition)}")
        params[param.name] = value
    return params


def entry_point_source(ep: EntryPoint) -> str:
    """Where a plugin comes from, for messages: its distribution and object."""
    return f"{ep.dist.name} ({ep.value})" if ep.dist else ep.value


def load_plugin(ep: EntryPoint, what: str, error: type[ValueError]) -> Any:
    """The object behind a plugin's entry point; a failure to load is an `error` saying why."""
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin must not take the built-ins down with it
        raise error(f"{what} plugin '{ep.name}' from {entry_point_source(ep)} failed to load: "
                    f"{type(exc).__name__}: {exc}") from exc
