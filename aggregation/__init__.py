"""Aggregation rules: arrays -> array. Pure functions over numpy (and Flower's numpy kernels).

    rule = get_rule("trimmed:0.2")           # or "fedavg", "krum:1", "gossip:0.5", "flwr:FedAdam:eta=0.01", ...
    new_weights = rule(results, reference=own_weights)   # results: list of (update, weight)
    consensus = get_rule("logit-mean")(logits)            # logits: list of (n_probe, n_classes) arrays
    check_inputs("bulyan:1", n)              # None, or why the rule cannot work with n inputs
    rule.client_config                       # what the rule adds to a client's fit config (FedProx's proximal_mu)
    list_rules()                             # every rule, JSON-ready

An update is `NDArrays` (one ndarray per tensor, as in Flower). By convention the aggregating node passes
its own weights both as `reference=` and as `results[0]`. Rules return new arrays and never modify or
alias their inputs. Every problem with a spec or with inputs is a `RuleError` (a ValueError) saying why.
A spec is parsed once, by `get_rule`; pass the Rule on. Flower's server strategies are rules under the
prefix "flwr:" (flower.py adapts them; the registry parses and binds them like any other).

Third-party rules
-----------------
A distribution adds rules through the entry-point group `manymodels.rules`; the entry point's name is the
rule's name (it may not shadow a built-in):

    [project.entry-points."manymodels.rules"]
    sign-mean = "mypkg.rules:SIGN_MEAN"

The object it loads is either

* a `RuleSpec`, whose `name` equals the entry point's name:

      SIGN_MEAN = RuleSpec(
          name="sign-mean", kind="weights", fn=sign_mean,
          params=(Param("lr", float, "> 0", lambda v: v > 0, default=0.01),),
          description="one line for `manymodels rules`",
          needs_reference=True,                 # optional: refuse to run without reference=
          min_inputs=lambda lr: 1,              # optional: the fewest inputs, from the parameters
          example="sign-mean:0.01",             # optional: shown in error messages
          client_params=("lr",),                # optional: parameters the clients get in their fit config
      )

  where a "weights" rule is `fn(results, reference, **params) -> NDArrays` and a "logits" rule is
  `fn(logits, **params) -> ndarray`, with the parameters as keywords, parsed from the spec
  "sign-mean:0.01" in the order of `params`; or
* a plain function `fn(results, reference) -> NDArrays`: a weights rule without parameters, described by
  the first line of its docstring.

Inputs are checked before `fn` runs (see `Rule.__call__`). Plugins are loaded when used: a plugin that
fails to import or is malformed is listed by `list_rules()` with an "error", `get_rule` of it raises a
RuleError with the reason, and the built-ins and other plugins keep working.
"""
from .base import NDArrays, Param, Results, RuleError, RuleSpec
from .registry import ENTRY_POINT_GROUP, Rule, after_bans, check_inputs, get_rule, list_rules

__all__ = [
    "ENTRY_POINT_GROUP",
    "NDArrays",
    "Param",
    "Results",
    "Rule",
    "RuleError",
    "RuleSpec",
    "after_bans",
    "check_inputs",
    "get_rule",
    "list_rules",
]
