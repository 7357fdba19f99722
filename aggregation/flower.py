"""Flower's server strategies as weights rules: the adapter behind the registry's `flwr:NAME[:key=value...]`.

    get_rule("flwr:FedTrimmedAvg:beta=0.2")
    get_rule("flwr:Krum:num_malicious_clients=1")
    get_rule("flwr:FedAdam:eta=0.01:tau=0.001")

Each rule runs the Flower strategy class's own `aggregate_fit` on the inputs, wrapped as Flower's
`FitRes`/`Parameters` (num_examples = the input's weight), so it gives what Flower gives.
Keyword names and defaults are the strategy constructor's own.

Stateful strategies (FedAvgM with a server learning rate or momentum, FedAdam, FedYogi, FedAdagrad)
run as a node-local server optimizer around the node's own model: the first call starts the
"server model" from `reference` (the node's own weights), later calls step from the model the
previous call returned, keeping the optimizer's moments and round count, as a Flower server keeps
them between rounds. Their state lives in the Rule object: build one Rule per node
(`get_rule(spec)` returns a new one on every call) and never share it between nodes.

FedProx aggregates as FedAvg; its proximal term runs in the client: its rule's `client_config` is
what a Flower server would add to each client's fit config ({"proximal_mu": mu}), for the learner
to send.

`find(NAME)` gives the registry a `RuleSpec` (parameters written key=value); the registry parses the
spec and binds the Rule. This module imports only base.py, never the registry.

`import flwr` costs about a second: it happens when a rule first runs, never at import.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from .base import NDArrays, Param, Results, RuleError, RuleSpec

PREFIX = "flwr:"

_F = Param("num_malicious_clients", int, ">= 0", lambda v: v >= 0, default=0)
_ETA = Param("eta", float, "> 0", lambda v: v > 0, default=0.1)
_ETA_L = Param("eta_l", float, "> 0", lambda v: v > 0, default=0.1)
_BETA_1 = Param("beta_1", float, "in [0, 1)", lambda v: 0 <= v < 1, default=0.9)
_BETA_2 = Param("beta_2", float, "in [0, 1)", lambda v: 0 <= v < 1, default=0.99)
_TAU = Param("tau", float, "> 0", lambda v: v > 0, default=1e-9)


def _with_defaults(param: Param, default: float) -> Param:
    return Param(param.name, param.type, param.domain, param.valid, default)


@dataclass(frozen=True)
class Strategy:
    """A Flower strategy usable as a rule."""

    name: str  # the rule is "flwr:" + name
    cls: str  # the class in flwr.server.strategy
    params: tuple[Param, ...]
    description: str
    stateful: bool = False  # keeps a server model between calls: one Rule per node
    min_inputs: Callable[..., int] = lambda **params: 1
    min_inputs_text: str = ""
    client_params: tuple[str, ...] = ()  # sent to the clients in their fit config
    kwargs: Callable[[dict[str, Any]], dict[str, Any]] = dict  # constructor keywords from the params


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("FedAvg", "FedAvg", (), "Flower's FedAvg: weighted mean of the updates (= fedavg)"),
    Strategy("FedMedian", "FedMedian", (), "Flower's FedMedian: coordinate-wise median (= median)"),
    Strategy("FedTrimmedAvg", "FedTrimmedAvg", (Param("beta", float, "in [0, 0.5)", lambda v: 0 <= v < 0.5, 0.2),),
             "Flower's FedTrimmedAvg: mean after cutting a fraction beta at each end (= trimmed:beta)"),
    Strategy("Krum", "Krum", (_F, Param("num_clients_to_keep", int, ">= 0", lambda v: v >= 0, default=0)),
             "Flower's Krum (= krum:f); with num_clients_to_keep > 0, Multi-Krum (= multikrum:f:m)",
             min_inputs=lambda num_malicious_clients, num_clients_to_keep: max(2 * num_malicious_clients + 3,
                                                                               num_clients_to_keep),
             min_inputs_text="max(2f+3, num_clients_to_keep)"),
    Strategy("MultiKrum", "Krum", (_F, Param("num_clients_to_keep", int, ">= 1", lambda v: v >= 1)),
             "Flower's Krum keeping num_clients_to_keep updates (= multikrum:f:m)",
             min_inputs=lambda num_malicious_clients, num_clients_to_keep: max(2 * num_malicious_clients + 3,
                                                                               num_clients_to_keep),
             min_inputs_text="max(2f+3, num_clients_to_keep)"),
    Strategy("Bulyan", "Bulyan", (_F,), "Flower's Bulyan over Krum (= bulyan:f)",
             min_inputs=lambda num_malicious_clients: 4 * num_malicious_clients + 3, min_inputs_text="4f+3",
             kwargs=lambda p: {**p, "to_keep": 0}),
    Strategy("FedAvgM", "FedAvgM", (Param("server_learning_rate", float, "> 0", lambda v: v > 0, default=1.0),
                                    Param("server_momentum", float, "in [0, 1)", lambda v: 0 <= v < 1, default=0.0)),
             "Flower's FedAvgM: server SGD with momentum on the mean update, around the node's own model",
             stateful=True),
    Strategy("FedAdam", "FedAdam", (_ETA, _ETA_L, _BETA_1, _BETA_2, _TAU),
             "Flower's FedAdam: server Adam on the mean update, around the node's own model", stateful=True),
    Strategy("FedYogi", "FedYogi", (_with_defaults(_ETA, 1e-2), _with_defaults(_ETA_L, 0.0316), _BETA_1, _BETA_2,
                                    _with_defaults(_TAU, 1e-3)),
             "Flower's FedYogi: server Yogi on the mean update, around the node's own model", stateful=True),
    Strategy("FedAdagrad", "FedAdagrad", (_ETA, _ETA_L, _TAU),
             "Flower's FedAdagrad: server Adagrad on the mean update, around the node's own model", stateful=True),
    Strategy("FedProx", "FedProx", (Param("proximal_mu", float, ">= 0", lambda v: v >= 0),),
             "Flower's FedProx: FedAvg here, plus proximal_mu in each Flower client's fit config",
             client_params=("proximal_mu",)),
)}

# Flower strategies that are not rules, and why (for the error message).
UNSUPPORTED = {
    "QFedAvg": "it needs each client's training loss",
    "FaultTolerantFedAvg": "use flwr:FedAvg; a failed peer simply sends nothing",
    "FedAvgAndroid": "it aggregates serialized Android byte buffers",
    "FedOpt": "it is the base class of FedAdam, FedYogi and FedAdagrad",
    "FedXgbBagging": "it aggregates XGBoost trees, not arrays",
    "FedXgbCyclic": "it aggregates XGBoost trees, not arrays",
    "FedXgbNnAvg": "it aggregates XGBoost trees, not arrays",
    "DPFedAvgFixed": "it wraps another strategy around server-side noise",
    "DPFedAvgAdaptive": "it wraps another strategy around server-side noise",
    "DifferentialPrivacyServerSideFixedClipping": "it wraps another strategy",
    "DifferentialPrivacyServerSideAdaptiveClipping": "it wraps another strategy",
    "DifferentialPrivacyClientSideFixedClipping": "it wraps another strategy",
    "DifferentialPrivacyClientSideAdaptiveClipping": "it wraps another strategy",
}


def _supported() -> str:
    return ", ".join(PREFIX + name for name in STRATEGIES)


def _strategy(name: str) -> Strategy:
    if name in STRATEGIES:
        return STRATEGIES[name]
    by_lower = {n.lower(): n for n in (*STRATEGIES, *UNSUPPORTED)}
    exact = by_lower.get(name.lower(), name)
    if exact in UNSUPPORTED:
        raise RuleError(f"Flower strategy {exact} is not supported as a rule ({UNSUPPORTED[exact]}); "
                        f"supported: {_supported()}")
    if exact in STRATEGIES:  # names are Flower's class names; any case is accepted
        return STRATEGIES[exact]
    raise RuleError(f"unknown Flower strategy '{name}'; supported: {_supported()}")


def find(name: str) -> RuleSpec:
    """The rule `flwr:NAME` (NAME in any case), with an aggregator of its own: the Rule bound from it
    holds the strategy, and so its state."""
    strategy = _strategy(name.strip())
    return RuleSpec(
        PREFIX + strategy.name, "weights", _Aggregate(strategy), strategy.params,
        strategy.description + ("; node-local state: one rule per node" if strategy.stateful else ""),
        needs_reference=strategy.stateful, min_inputs=strategy.min_inputs, min_inputs_text=strategy.min_inputs_text,
        named_params=True, client_params=strategy.client_params,
    )


def definitions() -> list[RuleSpec]:
    """Every supported strategy as a rule, for `list_rules()` (without importing flwr)."""
    return [find(name) for name in STRATEGIES]


def source() -> str:
    """Where the strategies come from, for `list_rules()`: "flwr 1.42.0"."""
    try:
        return f"flwr {version('flwr')}"
    except PackageNotFoundError:
        return "flwr (not installed)"


def _examples(weight: float) -> int | float:
    """FitRes.num_examples is an int in Flower; keep a fractional weight as it is."""
    return int(weight) if float(weight).is_integer() else float(weight)


class _Aggregate:
    """Calls the strategy's aggregate_fit; holds the strategy (and thus its state) of one Rule."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.instance: Any = None
        self.round = 0  # Flower's server_round: calls so far, from 1

    def _build(self, params: dict[str, Any], reference: NDArrays | None) -> Any:
        from flwr.common import ndarrays_to_parameters
        from flwr.server import strategy as flwr_strategies

        kwargs = self.strategy.kwargs(dict(params))
        if self.strategy.stateful:  # the node's own model is the server model to start from
            kwargs["initial_parameters"] = ndarrays_to_parameters([np.asarray(a) for a in reference])
        # A metrics function: Flower otherwise logs "No fit_metrics_aggregation_fn provided".
        return getattr(flwr_strategies, self.strategy.cls)(fit_metrics_aggregation_fn=lambda metrics: {}, **kwargs)

    def __call__(self, results: Results, reference: NDArrays | None = None, **params: Any) -> NDArrays:
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

        if self.instance is None:
            self.instance = self._build(params, reference)
        self.round += 1
        # ndarrays_to_parameters serialises: the strategy works on copies and cannot touch the inputs.
        fit_results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(update)), _examples(weight), {}))
                       for update, weight in results]
        try:
            aggregated, _ = self.instance.aggregate_fit(self.round, fit_results, [])
        except (ValueError, ZeroDivisionError, AssertionError) as exc:
            raise RuleError(f"{PREFIX}{self.strategy.name}: {exc}") from None
        if aggregated is None:
            raise RuleError(f"{PREFIX}{self.strategy.name} returned no parameters")
        out = parameters_to_ndarrays(aggregated)
        # Float tensors keep their dtype (server optimizers compute in float64); ints come back float64.
        return [o.astype(a.dtype) if np.issubdtype(a.dtype, np.inexact) else o.astype(np.float64)
                for o, a in zip(out, results[0][0])]
