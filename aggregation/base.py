"""What the rule modules, the Flower adapter and the registry share (kept apart, so that none of them
imports the registry): the array types, the error, and `RuleSpec`, a rule as the registry knows it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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

    def write(self, values: dict[str, Any]) -> str:
        """The spec of this rule with these parameter values: "name:v1:v2" or "name:k1=v1:k2=v2"."""
        return ":".join([self.name, *(f"{k}={v}" if self.named_params else str(v) for k, v in values.items())])

    def usage(self) -> str:
        example = self.example or self.write({p.name: f"<{p.name}>" if p.default is None else p.default
                                              for p in self.params})
        if not self.params:
            return f"{self.name} takes no parameters: {example}"
        plural = "s" if len(self.params) > 1 else ""
        described = " and ".join(p.describe() for p in self.params)
        count = _COUNT[len(self.params)] if len(self.params) < len(_COUNT) else len(self.params)
        return f"{self.name} takes {count} parameter{plural} {described}: {example}"
