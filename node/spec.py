"""What a node runs, as a typed spec checked in one place, and the one way to build a node from it.

The CLI's options (and a daemon's saved config.json) are strings and numbers. `NodeSpec.parse`
turns them into a spec once: the rules resolved into `Rule` objects, the exchange checked against
`EXCHANGES`, every number against its range; a mistake is a `SpecError`, one line for the user, with
the same words for `simulate` and `node start`. Nothing downstream parses a rule or an exchange name
again. `build_node` builds a node from a spec and what it knows of its data (`NodeData`), in the
simulator and in the daemon alike. The simulation's own spec, around a NodeSpec, is in node/sim/spec.py.

>>> spec = NodeSpec.parse(LearnerRecipe(hidden=(32,), optimizer="sgd", lr=0.05, momentum=0.9),
...                      rule="trimmed:0.2")
>>> spec.rule.spec, spec.learner.training.optimizer
('trimmed:0.2', 'sgd')
>>> NodeSpec.parse(LearnerRecipe(), reputation=2)
Traceback (most recent call last):
...
manymodels.node.spec.SpecError: --reputation must be in [0, 1], got 2
"""
from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from manymodels.aggregation import Rule, RuleError, get_rule
from manymodels.protocol import Codec, CodecError, Identity, get_codec

from .core.exchange import (Distillation, DistillSettings, Exchange, Mixed, SyntheticSamples, SyntheticSettings,
                            WeightGossip)
from .core.node import Node
from .core.reputation import Reputation
from .core.sharing import SharePolicy, ShareError, Sharing
from .core.transport import Transport
from .learning.partition import PartitionError, parse_partition
from .learning.probe import ProbeSet
from .learning.generator import moments_spent
from .learning.privacy import NO_PRIVACY, Privacy
from .learning.recipe import LearnerRecipe
from .learning.training import OPTIMIZERS


# The codec of each kind a node uses unless told otherwise: what its messages were before codecs.
DEFAULT_CODECS = {"weights": "float32", "logits": "float16"}


class SpecError(ValueError):
    """Options that cannot run as given; the message is one line for the user."""


@dataclass(frozen=True)
class NodeSpec:
    """One node: its learner, what it exchanges and how it folds it, whom it stops trusting."""

    learner: LearnerRecipe
    exchange: str  # a key of EXCHANGES
    rule: Rule  # a weights rule (weights and mixed exchanges)
    logit_rule: Rule  # a logits rule (distill and mixed exchanges)
    reputation: float = 0.0  # ban a peer whose reputation falls below this (0: never)
    local_epochs: int = 1
    temperature: float = 2.0  # distillation
    distill_epochs: int = 2
    synthetic_per_class: int = 20
    synthetic_weight: float = 0.5  # loss weight of a peer's synthetic sample
    licence: str = "CC-BY-4.0"  # on this node's synthetic data cards
    accept_licences: tuple[str, ...] = ("CC0-1.0", "CC-BY-4.0")
    share: SharePolicy = SharePolicy()  # who gets this node's knowledge (--share)
    codec: Codec = get_codec(DEFAULT_CODECS["weights"])  # how weights travel (weights and mixed exchanges)
    logit_codec: Codec = get_codec(DEFAULT_CODECS["logits"])  # how logits travel (distill and mixed)
    # With --exchange synthetic the --dp-* options protect what leaves the node, the class moments
    # its samples are drawn from (node/learning/generator.py); its model, which stays, trains without DP-SGD.
    moments: Privacy = NO_PRIVACY

    @classmethod
    def parse(cls, learner: LearnerRecipe, *, exchange: str = "weights", rule: str = "fedavg",
              logit_rule: str = "logit-probmean", compress: str = DEFAULT_CODECS["weights"],
              compress_logits: str = DEFAULT_CODECS["logits"], **settings: Any) -> NodeSpec:
        """The spec from options as given (`share` as --share's text); a SpecError says what is wrong
        with them."""
        check_learner(learner)
        exchange = exchange_name(exchange)
        check_privacy(learner, exchange)
        if exchange == "synthetic" and learner.privacy.on:
            settings["moments"] = learner.privacy
            learner = replace(learner, dp_noise=NO_PRIVACY.noise, dp_epsilon=NO_PRIVACY.epsilon)
        try:
            settings["share"] = SharePolicy.parse(settings.get("share", "all"))
        except ShareError as exc:
            raise SpecError(str(exc)) from None
        spec = cls(learner, exchange, resolve_rule(rule, "weights"), resolve_rule(logit_rule, "logits"),
                   codec=resolve_codec(compress, "weights", exchange),
                   logit_codec=resolve_codec(compress_logits, "logits", exchange), **settings)
        if not 0 <= spec.reputation <= 1:
            raise SpecError(f"--reputation must be in [0, 1], got {spec.reputation:g}")
        if spec.local_epochs < 1:
            raise SpecError("--local-epochs must be at least 1")
        _check_client_app(spec)
        return spec


def exchange_name(name: str) -> str:
    if name not in EXCHANGES:
        raise SpecError(f"unknown exchange {name!r}; available: {', '.join(EXCHANGES)}")
    return name


def resolve_rule(text: str, kind: str) -> Rule:
    """The rule `text` names, which must be a `kind` ("weights" or "logits") rule."""
    try:
        rule = get_rule(text)
    except RuleError as exc:
        raise SpecError(str(exc)) from None
    if rule.kind != kind:
        raise SpecError(f"{text} is a {rule.kind} rule; this option takes a {kind} rule")
    return rule


_CODEC_OPTIONS = {"weights": "--compress", "logits": "--compress-logits"}
_SENDS = {"weights": ("weights", "mixed"), "logits": ("distill", "mixed")}  # which exchanges send each kind


def resolve_codec(text: str, kind: str, exchange: str) -> Codec:
    """The codec `text` names, which must compress `kind` ("weights" or "logits"), and which the
    exchange must send unless it is the default."""
    option = _CODEC_OPTIONS[kind]
    try:
        codec = get_codec(text)
    except CodecError as exc:
        raise SpecError(f"{option}: {exc}") from None
    if kind not in codec.definition.kinds:
        raise SpecError(f"{option} {text}: {codec.name} compresses {' and '.join(codec.definition.kinds)}, "
                        f"not {kind}")
    if exchange not in _SENDS[kind] and codec.spec != get_codec(DEFAULT_CODECS[kind]).spec:
        raise SpecError(f"{option} compresses {kind}, which --exchange {exchange} does not send")
    return codec


def check_learner(recipe: LearnerRecipe) -> None:
    """The recipe's data split and training settings (a Flower client app brings its own)."""
    if not 0 <= recipe.partition_id < recipe.num_partitions:
        raise SpecError(f"--partition-id must be in 0..{recipe.num_partitions - 1}")
    if recipe.client_app:
        return
    if recipe.run_config:
        raise SpecError("--run-config is the run config of a Flower client; give --client-app too")
    try:
        parse_partition(recipe.partition)
    except PartitionError as exc:
        raise SpecError(str(exc)) from None
    t = recipe.training
    if t.optimizer not in OPTIMIZERS:
        raise SpecError(f"unknown optimizer {t.optimizer!r}; available: {', '.join(OPTIMIZERS)}")
    if not t.hidden or min(t.hidden) < 1:
        raise SpecError(f"--hidden takes layer sizes of at least 1, e.g. 64,32; got {hidden_text(t.hidden)!r}")
    if not t.lr > 0:
        raise SpecError(f"--lr must be a positive number, got {t.lr:g}")
    if not 0 <= t.momentum < 1 or (t.momentum and t.optimizer != "sgd"):
        raise SpecError(f"--momentum is SGD's, in [0, 1) (with --optimizer sgd); got {t.momentum:g} "
                        f"with {t.optimizer}")
    if not t.weight_decay >= 0:
        raise SpecError(f"--weight-decay must be at least 0, got {t.weight_decay:g}")
    if t.batch_size < 1:
        raise SpecError(f"--batch-size must be at least 1, got {t.batch_size}")


def check_privacy(recipe: LearnerRecipe, exchange: str) -> None:
    """The --dp-* settings, and that what the node publishes is something they cover (docs/PRIVACY.md):
    DP-SGD's model, or with the synthetic exchange the noisy class moments (no training, any model)."""
    p = recipe.privacy
    if not p.on:
        return
    if p.noise < 0 or p.epsilon < 0 or not p.clip > 0 or not 0 < p.delta < 1:
        raise SpecError(f"--dp-noise and --dp-epsilon must be at least 0, --dp-clip above 0 and --dp-delta in (0, 1); "
                        f"got {p.noise:g}, {p.epsilon:g}, {p.clip:g}, {p.delta:g}")
    if recipe.client_app:
        raise SpecError("DP-SGD runs in the built-in torch learners; a Flower client trains itself (use Flower's "
                        "own DP mods in it), so --dp-* options do not apply with --client-app")
    if exchange != "synthetic" and "forest" in recipe.model.split(","):
        raise SpecError("DP-SGD trains torch models by gradient; the forest model has none: --dp-* options need "
                        "logreg, mlp, mlp-wide or cnn")
    if exchange != "synthetic" and not p.noise and not p.epochs:
        raise SpecError("--dp-epsilon without --dp-noise plans the noise for the training to come: give --dp-epochs "
                        "(periods)")
    if importlib.util.find_spec("opacus") is None:
        raise SpecError("differential privacy needs Opacus: pip install 'manymodels[dp]'")


def hidden_sizes(text: str) -> tuple[int, ...]:
    """`--hidden 64,32` -> (64, 32)."""
    try:
        return tuple(int(size) for size in text.split(","))
    except ValueError:
        raise SpecError(f"--hidden takes layer sizes of at least 1, e.g. 64,32; got {text!r}") from None


def hidden_text(hidden: tuple[int, ...]) -> str:
    return ",".join(map(str, hidden))


def check_bootstrap(addr: str) -> None:
    """A `--bootstrap` address must be a multiaddr that ends in the peer's id (/p2p/<peer id>): Noise
    checks the key behind it, so the node dials whom it means to. Checked before it is saved."""
    import multiaddr  # py-libp2p's; light, unlike libp2p itself

    try:
        parts = [p.name for p in multiaddr.Multiaddr(addr).protocols()]
    except ValueError as exc:  # multiaddr's errors are ValueErrors; a /p2p value that is no peer id among them
        raise SpecError(f"--bootstrap {addr!r} is not a multiaddr ({getattr(exc, 'message', exc)})") from None
    if parts[-1:] != ["p2p"]:
        raise SpecError(f"--bootstrap {addr} has no /p2p/<peer id> at the end; a node prints its full address "
                        "when it starts (`manymodels node status` shows it)")
    if len(parts) == 1:
        raise SpecError(f"--bootstrap {addr} says whom but not where: give the peer's address before /p2p/")


def _check_client_app(spec: NodeSpec) -> None:
    if spec.learner.client_app:
        if spec.exchange == "synthetic":
            raise SpecError("a Flower client keeps its data to itself: --exchange synthetic needs the built-in "
                            "datasets; use weights, distill or mixed with --client-app")
    elif spec.rule.client_config:
        raise SpecError(f"{spec.rule.spec}: the proximal term runs in a Flower client's fit (it gets proximal_mu "
                        "in its fit config); it needs --client-app")


@dataclass
class NodeData:
    """What a node's exchange is built from besides its spec; `probe` and `generator` are called
    only by the exchanges that use them (a daemon's come from its worker process)."""

    num_classes: int
    class_counts: list[int]  # private examples per class (distillation publishes them)
    probe: Callable[[], ProbeSet]  # the public probe set (distillation)
    generator: Callable[[], Any]  # anything with .sample(per_class, rng) -> (x, y) (synthetic samples)
    input_shape: tuple[int, ...]
    value_range: tuple[float, float]
    rng: np.random.Generator  # the exchange's randomness: synthetic samples, random-k's indices


def _own(rule: Rule) -> Rule:
    """A node's own copy of a resolved rule: a Flower strategy keeps state in its rule."""
    return copy.deepcopy(rule)


def _weights(spec: NodeSpec, data: NodeData) -> Exchange:
    return WeightGossip(_own(spec.rule), spec.codec, data.rng)


def _distill(spec: NodeSpec, data: NodeData) -> Exchange:
    return Distillation(DistillSettings(data.probe(), _own(spec.logit_rule), data.class_counts, spec.temperature,
                                        spec.distill_epochs, spec.logit_codec))


def _synthetic(spec: NodeSpec, data: NodeData) -> Exchange:
    return SyntheticSamples(SyntheticSettings(
        data.generator(), data.rng, data.input_shape, data.value_range, spec.synthetic_per_class,
        spec.synthetic_weight, spec.licence, tuple(spec.accept_licences)))


def _mixed(spec: NodeSpec, data: NodeData) -> Exchange:
    return Mixed(_weights(spec, data), _distill(spec, data))


# Every exchange a node can run, by its `--exchange` name: a kind of knowledge, built from the spec.
EXCHANGES: dict[str, Callable[[NodeSpec, NodeData], Exchange]] = {
    "weights": _weights,
    "distill": _distill,
    "synthetic": _synthetic,
    "mixed": _mixed,
}


def build_node(spec: NodeSpec, identity: Identity, learner: Any, transport: Transport, clock: Callable[[], int],
               data: NodeData, node_class: type[Node] = Node, **extra: Any) -> Node:
    """A node as `spec` says, on `transport`, with the clock `clock` (ms); `node_class` and `extra`:
    the daemon's and the simulator's attackers' own kinds of node."""
    node = node_class(identity, learner, transport, EXCHANGES[spec.exchange](spec, data),
                      num_classes=data.num_classes, clock=clock, reputation=Reputation(spec.reputation),
                      sharing=Sharing(spec.share), privacy_budget=spec.learner.privacy.epsilon, **extra)
    if spec.moments.on:  # released once, when the generator is fitted: that ε, from the start
        node.privacy = moments_spent(spec.moments)
    return node
