"""What a node sends and what it does with what it receives. One class per kind of knowledge;
the node calls publish -> (messages arrive: receive) -> fold, and trains with `extra()` samples.

An exchange sees a `NodeView` of its node (the learner, the bans, a judge of peers), never the
node itself, and answers it: `receive` returns the reason it refuses a message, `fold` returns a
`Folded` (whose messages went in, what the fold refused); the node counts the refusals.

Messages reach an exchange only after the protocol layer verified them. An exchange may still
refuse one it cannot or will not use (other architecture, wrong shapes, a licence it does not
accept); each refusal is counted by reason in `node.stats.refused`. The exchanges by `--exchange`
name, and how each is built from a node's spec: node/spec.py's EXCHANGES."""
from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field

import numpy as np

from manymodels.aggregation import Rule, RuleError, after_bans, check_inputs
from manymodels.aggregation.registry import BUILTINS
from manymodels.protocol import (Codec, Coded, Logits, Message, Payload, SyntheticBatch, Tensor, Weights, codec_of,
                                 dense, get_codec)

from ..learning.generator import NAME as GENERATOR_NAME
from ..learning.generator import GaussianClassGenerator
from ..learning.learner import Learner, Samples, log_soft_labels
from ..learning.probe import ProbeSet
from .feedback import ErrorFeedback


@dataclass(frozen=True)
class NodeView:
    """What an exchange sees of its node. `judge(own, contributions, min_scale)` scores peers'
    contributions and may ban a peer: `banned` is the node's live set of banned keys, so a ban
    made during a fold shows at once."""
    id: str
    learner: Learner
    num_classes: int
    tensor_specs: list[tuple[tuple[int, ...], np.dtype]]  # the learner's weights, as a peer's must be
    banned: Set[bytes]
    judge: Callable[..., None]
    banned_neighbours: Callable[[], int]

    @functools.cached_property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The learner's tensors' shapes, as a peer's weights must have them."""
        return tuple(tuple(shape) for shape, _ in self.tensor_specs)


@dataclass(frozen=True)
class Folded:
    """What one fold did: the messages whose content went into the model, as (sender's peer id,
    payload digest), and why the fold could not use what it held (a rule that cannot run on so
    few inputs), one reason per refusal."""
    changed: bool = False
    inputs: tuple[tuple[str, bytes], ...] = ()
    refused: tuple[str, ...] = ()

    @property
    def senders(self) -> list[str]:
        return sorted({sender for sender, _ in self.inputs})

    @staticmethod
    def of(parts: list[Folded]) -> Folded:
        """One fold made of several (a mixed exchange's parts), in order."""
        return Folded(any(f.changed for f in parts), tuple(i for f in parts for i in f.inputs),
                      tuple(r for f in parts for r in f.refused))


MAX_HEARD = 64  # senders of sparse weights whose last known weights a node keeps (the bases of their next)


def _inputs(messages: Iterable[Message]) -> tuple[tuple[str, bytes], ...]:
    return tuple((m.sender_id, m.digest) for m in messages)


def _flat(tensors: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(t) for t in tensors]) if tensors else np.zeros(0)


def flat_rows(inputs: list[list[np.ndarray]]) -> np.ndarray:
    """Each input's tensors flattened into one row, in float64 as a rule sums them: (inputs,
    parameters). The inputs have tensors of the same sizes (a receiver refuses weights shaped
    otherwise; only the total is checked here). One concatenation of every tensor: a third of the
    time of a row at a time, for the simulator's thousands of inputs (a widening cast, so the
    values are the same)."""
    if not inputs:
        return np.zeros((0, 0))
    flat = np.concatenate([t.ravel() for tensors in inputs for t in tensors] or [np.zeros(0)])
    if flat.size != len(inputs) * sum(t.size for t in inputs[0]):
        raise ValueError("inputs of different sizes cannot be rows of one array")
    return flat.astype(np.float64).reshape(len(inputs), -1)


def split_rows(rows: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    """(n, parameters) rows back into `like`'s tensors, each stacked over the rows, (n, *shape), in
    its dtype."""
    ends = np.cumsum([t.size for t in like])[:-1]
    return [part.astype(t.dtype).reshape(-1, *t.shape) for part, t in zip(np.split(rows, ends, axis=1), like)]


def capped_at_median(claims: np.ndarray) -> np.ndarray:
    """Example counts are self-reported and cannot be checked: cap each claim at the (lower)
    median claim, at least 1, so a liar claiming a billion examples weighs no more than a typical
    peer, also when there are only two claims."""
    claims = np.asarray(claims, dtype=np.float64)
    return np.minimum(claims, max(np.sort(claims)[(len(claims) - 1) // 2], 1.0))


class Exchange(ABC):
    name: str
    consumes: tuple[str, ...] = ()  # the payload kinds it folds

    @abstractmethod
    def publish(self, node: NodeView, version: int) -> list[Payload]:
        """Payloads to sign and send to every neighbour now, as the node's model `version`."""

    @abstractmethod
    def receive(self, node: NodeView, message: Message) -> str | None:
        """Keep a verified message for the next fold; or the reason it is refused."""

    @abstractmethod
    def fold(self, node: NodeView) -> Folded:
        """Combine what was received into the node's learner."""

    def extra(self) -> Samples | None:
        """Samples from peers to train on beside the private data."""
        return None

    def start(self, node: NodeView) -> None:
        """Called once as the node is built, before it trains: the learner holds its initial model."""

    @abstractmethod
    def largest_payload(self, node: NodeView) -> int:
        """Bytes of the largest payload this exchange can fold (what a node caps its frames by)."""


class WeightGossip(Exchange):
    """Asynchronous weight gossip: fold the newest weights from each peer of the same
    architecture, received since the last fold, together with one's own through the node's rule.
    Weights travel through the node's codec with error feedback (feedback.py); received ones are
    decoded to the learner's dtype at the fold, what a sparse message leaves out taken from the
    sender's weights as last heard (docs/COMPRESSION.md)."""

    name = "weights"
    consumes = ("weights",)

    def __init__(self, rule: Rule, codec: Codec = get_codec("float32"), rng: np.random.Generator | None = None) -> None:
        self.rule = rule
        self.codec = codec
        self._compressor = ErrorFeedback(codec, rng)
        self._inbox: dict[bytes, Message] = {}  # the newest weights message per sender
        self._heard: OrderedDict[bytes, list[np.ndarray]] = OrderedDict()  # senders of sparse weights, as last heard
        self._rules = {0: rule}  # the rule after k bans of neighbours (after_bans), by k

    @property
    def builtin_rule(self) -> bool:
        """The rule is a built-in one, a pure function of its inputs (aggregation/weights.py), so a
        fold's merge may be computed apart from the fold (a replay, the simulator's batched folds)."""
        return self.rule.name in BUILTINS and self.rule.fn is BUILTINS[self.rule.name].fn

    @property
    def pending(self) -> int:
        """Senders whose weights the next fold takes."""
        return len(self._inbox)

    def start(self, node: NodeView) -> None:
        if node.learner.supports_weights and not self.codec.lossless:
            self._compressor.start(node.learner.get_weights())

    def publish(self, node: NodeView, version: int) -> list[Payload]:
        learner = node.learner
        if not learner.supports_weights:
            return []
        return [Weights(learner.architecture, version, learner.num_examples,
                        self._compressor.compress(learner.get_weights()))]

    def largest_payload(self, node: NodeView) -> int:
        """Exactly the node's own tensors (a peer's must match them), plus their headers."""
        if not node.learner.supports_weights:
            return 0
        return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in node.tensor_specs) \
            + 64 * len(node.tensor_specs)

    def receive(self, node: NodeView, message: Message) -> str | None:
        payload = message.payload
        if not isinstance(payload, Weights):
            return None
        if payload.model != node.learner.architecture or not node.learner.supports_weights:
            return "other_architecture"
        if payload.shapes != node.shapes:
            return "tensor_mismatch"  # checked before anything of a coded tensor's dense size is built
        if not payload.finite:
            return "non_finite"
        previous = self._inbox.get(message.sender)
        if previous is None or payload.version >= previous.payload.version:
            self._inbox[message.sender] = message
        return None

    def _decode(self, peer: bytes, tensors: list[Tensor], own: list[np.ndarray]) -> list[np.ndarray]:
        """A peer's weights as this node's dtype. A sparse message brings some values: the others are
        the peer's as last heard (its own weights for a peer not heard yet), kept for the next one."""
        if all(type(t) is np.ndarray and t.dtype == o.dtype == np.float32 for t, o in zip(tensors, own)):
            return list(tensors)  # plain float32, as the node's: what dense() gives (the common case)
        if not any(isinstance(t, Coded) and codec_of(t).relative for t in tensors):
            return [dense(t).astype(o.dtype, copy=False) for t, o in zip(tensors, own)]
        bases = self._heard.pop(peer, own)
        decoded = [dense(t, base=b).astype(o.dtype, copy=False) for t, b, o in zip(tensors, bases, own)]
        self._heard[peer] = decoded
        while len(self._heard) > MAX_HEARD:
            self._heard.popitem(last=False)  # the peer heard from longest ago
        return decoded

    def fold(self, node: NodeView) -> Folded:
        if not self._inbox:
            return Folded()
        own = node.learner.get_weights()
        inbox, tensors = self._inbox, self.take_decoded(own)
        node.judge(_flat(own), {peer: _flat(peer_tensors) for peer, (peer_tensors, _) in tensors.items()})
        inbox = {peer: m for peer, m in inbox.items() if peer not in node.banned}  # bans made just now too
        if not inbox:
            return Folded()
        merged = self.merge(node, own, {peer: tensors[peer] for peer in inbox})
        if merged is None:  # too few inputs this round (loss, churn): keep the local model
            return Folded(refused=("rule_cannot_fold",))
        node.learner.set_weights(merged)
        return Folded(True, _inputs(inbox.values()))

    def take_decoded(self, own: list[np.ndarray]) -> dict[bytes, tuple[list[np.ndarray], int]]:
        """Empty the inbox: each sender's weights decoded against `own` (the node's), and the examples it claims."""
        inbox, self._inbox = self._inbox, {}  # one swap: a daemon's network thread may be adding
        return {peer: (self._decode(peer, m.payload.tensors, own), m.payload.num_examples) for peer, m in inbox.items()}

    def merge(self, node: NodeView, own: list[np.ndarray],
              peers: dict[bytes, tuple[list[np.ndarray], int]]) -> list[np.ndarray] | None:
        """The rule's combination of the node's weights `own` with the peers' decoded ones, each weighed
        by the examples it claims (capped at the median); None when the rule cannot fold so few."""
        claims = self._claims(node, [count for _, count in peers.values()])
        try:
            return self._rule(node)(list(zip([own, *(t for t, _ in peers.values())], claims)), reference=own)
        except RuleError:
            return None

    def coefficients(self, node: NodeView, counts: list[int]) -> list[float] | None:
        """A linear rule's coefficients of the node's weights and of peers' claiming `counts` examples
        in what `merge` returns; None when the rule cannot fold so few. (Only for a rule with
        `coefficients`: aggregation/base.py's RuleSpec.)"""
        rule = self._rule(node)
        if check_inputs(rule, len(counts) + 1):
            return None
        try:
            return rule.definition.coefficients(self._claims(node, counts), **rule.params)
        except RuleError:
            return None

    def _claims(self, node: NodeView, counts: list[int]) -> list[float]:
        return capped_at_median([node.learner.num_examples, *counts]).tolist()

    def _rule(self, node: NodeView) -> Rule:
        """The rule after the node's bans of neighbours (after_bans), built once per number of bans."""
        banned = node.banned_neighbours()
        if banned not in self._rules:
            self._rules[banned] = after_bans(self.rule, banned)
        return self._rules[banned]


@dataclass
class DistillSettings:
    probe: ProbeSet
    rule: Rule  # a logits rule
    class_counts: list[int]  # private examples per class, published with the logits
    temperature: float = 2.0
    epochs: int = 2
    codec: Codec = get_codec("float16")  # soft labels need no more precision than float16: half the bytes


class Distillation(Exchange):
    """Publish logits on the shared probe set; fold the peers' consensus into one's own model by
    distillation (the FedMD / FedDF pattern); private fine-tuning happens in the next local fit.

    Before the rule runs, each model's probability for class c is weighed by its share of all the
    class-c examples behind the signals: on a non-IID network a model that never saw c has no
    opinion on c worth hearing, and one that saw most of c is the expert. This suits the
    mean-like rules (logit-probmean); a median of such signals follows the majority, which on a
    non-IID network does not know the class."""

    name = "distill"
    consumes = ("logits",)

    def __init__(self, settings: DistillSettings) -> None:
        self.settings = settings
        self._digest = settings.probe.digest
        # per sender: log soft labels, class counts, and the message they came in
        self._inbox: dict[bytes, tuple[np.ndarray, np.ndarray, Message]] = {}

    def publish(self, node: NodeView, version: int) -> list[Payload]:
        s = self.settings
        logits = s.codec.encode(node.learner.predict(s.probe.x))
        return [Logits(self._digest, node.learner.architecture, version, s.temperature, logits,
                       list(s.class_counts))]

    def largest_payload(self, node: NodeView) -> int:
        """One row per probe input, float64 at most, and the class counts."""
        return len(self.settings.probe.x) * node.num_classes * 8 + 16 * node.num_classes

    def receive(self, node: NodeView, message: Message) -> str | None:
        payload = message.payload
        if not isinstance(payload, Logits):
            return None
        if payload.probe != self._digest:
            return "other_probe_set"
        if payload.logits.shape != (len(self.settings.probe.x), node.num_classes):
            return "logits_shape"
        logits = dense(payload.logits)
        if not np.isfinite(logits).all():
            return "non_finite"
        # Normalised on arrival: architectures differ wildly in logit scale (a forest's log
        # probabilities vs an overconfident net's), and the rule must compare like with like.
        self._inbox[message.sender] = (log_soft_labels(logits, payload.temperature),
                                       np.asarray(payload.class_counts, dtype=np.float64), message)
        return None

    def fold(self, node: NodeView) -> Folded:
        if not self._inbox:
            return Folded()
        s = self.settings
        own = (log_soft_labels(node.learner.predict(s.probe.x), s.temperature),
               np.asarray(s.class_counts, dtype=np.float64))
        inbox, self._inbox = self._inbox, {}  # one swap: a daemon's network thread may be adding
        node.judge(own[0], {peer: signal for peer, (signal, _, _) in inbox.items()})
        inbox = {peer: v for peer, v in inbox.items() if peer not in node.banned}  # bans made just now too
        if not inbox:
            return Folded()
        signals, counts = zip(own, *(v[:2] for v in inbox.values()))
        # scale each model's class counts down to its capped total: a liar claiming 10 000 of
        # every class cannot drown out the experts
        counts = np.stack(counts)  # (models, classes)
        totals = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        counts = counts * capped_at_median(totals) / totals
        share = counts / np.maximum(counts.sum(axis=0), 1e-12)
        weight = np.log(np.maximum(share * len(signals), 1e-4))  # 0 for uniform shares: IID is unchanged
        try:
            consensus = s.rule([signal + w for signal, w in zip(signals, weight)])
        except RuleError:
            return Folded(refused=("rule_cannot_fold",))
        node.learner.distill(s.probe.x, log_soft_labels(consensus, 1.0), s.temperature, s.epochs)
        return Folded(True, _inputs(message for _, _, message in inbox.values()))


@dataclass
class SyntheticSettings:
    generator: GaussianClassGenerator  # or anything with .sample(per_class, rng) -> (x, y)
    rng: np.random.Generator
    input_shape: tuple[int, ...]
    value_range: tuple[float, float]
    per_class: int = 20
    weight: float = 0.5  # loss weight of a received sample relative to a private one
    licence: str = "CC-BY-4.0"
    accept_licences: tuple[str, ...] = ("CC0-1.0", "CC-BY-4.0")
    retention: str = "delete after 30 days"
    consent: str = "synthetic samples only; no private record leaves the node"
    max_samples: int = 10_000  # per batch
    cards: list[dict] = field(default_factory=list)  # provenance of what was accepted


class SyntheticSamples(Exchange):
    """Publish samples from a generative model of one's own data, with a signed data card;
    train on peers' samples that pass the checks, at a configurable weight."""

    name = "synthetic"
    consumes = ("synthetic",)

    def __init__(self, settings: SyntheticSettings) -> None:
        self.settings = settings
        self._pool: dict[bytes, Message] = {}  # the newest batch per peer
        self._fresh: set[bytes] = set()  # peers whose batch arrived since the last fold
        self._own: SyntheticBatch | None = None  # the last batch published: the reference for judging

    def publish(self, node: NodeView, version: int) -> list[Payload]:
        s = self.settings
        x, y = s.generator.sample(s.per_class, s.rng)
        card = {"licence": s.licence, "consent": s.consent, "retention": s.retention,
                "generator": GENERATOR_NAME, "source": node.id, "digest": b""}
        batch = SyntheticBatch(x, y, card)
        card["digest"] = batch.content_digest()
        self._own = batch
        return [batch]

    def largest_payload(self, node: NodeView) -> int:
        """The sample cap, float64 at most, with a label each."""
        s = self.settings
        return s.max_samples * (math.prod(s.input_shape) + 1) * 8

    def refusal(self, node: NodeView, message: Message, batch: SyntheticBatch) -> str | None:
        """Why this batch must not be trained on, or None."""
        s = self.settings
        low, high = s.value_range
        if batch.card["licence"] not in s.accept_licences:
            return "licence_refused"
        if batch.card["source"] != message.sender_id:
            return "card_source_mismatch"
        if batch.card["digest"] != batch.content_digest():
            return "card_digest_mismatch"
        if tuple(batch.x.shape[1:]) != tuple(s.input_shape):
            return "sample_shape"
        if len(batch.y) > s.max_samples:
            return "too_many_samples"
        if not (np.isfinite(batch.x).all() and batch.x.min(initial=low) >= low and batch.x.max(initial=high) <= high):
            return "value_range"
        if len(batch.y) and (batch.y.min() < 0 or batch.y.max() >= node.num_classes):
            return "label_set"
        return None

    def receive(self, node: NodeView, message: Message) -> str | None:
        batch = message.payload
        if not isinstance(batch, SyntheticBatch):
            return None
        reason = self.refusal(node, message, batch)
        if reason:
            return reason
        self._pool[message.sender] = message
        self.settings.cards.append({**batch.card, "digest": batch.card["digest"].hex(), "samples": len(batch.y)})
        del self.settings.cards[:-100]  # keep the latest provenance only
        self._fresh.add(message.sender)
        return None

    def extra(self) -> Samples | None:
        if not self._pool:
            return None
        batches = [m.payload for m in self._pool.values()]
        return Samples(np.concatenate([b.x for b in batches]), np.concatenate([b.y for b in batches]),
                       self.settings.weight)

    def fold(self, node: NodeView) -> Folded:
        """New samples join the pool; they are trained on in the next local fit, with the
        private data (no extra epoch: every exchange gets the same training budget)."""
        fresh, self._fresh = self._fresh, set()
        if fresh and self._own is not None:
            self._judge(node, {peer: self._pool[peer].payload for peer in fresh if peer in self._pool})
        for peer in node.banned & self._pool.keys():  # stop training on what a banned peer sent
            del self._pool[peer]
        inputs = _inputs(m for peer, m in self._pool.items() if peer in fresh)
        return Folded(bool(inputs), inputs)

    def _judge(self, node: NodeView, batches: dict[bytes, SyntheticBatch]) -> None:
        """Score each peer's samples by how often this node's model agrees with their labels, per
        class this node knows (its own data has it). Honest samples of class c look like c to any
        model that knows c; a liar's labels do not. A class a peer did not send counts as typical."""
        classes = np.unique(self._own.y)
        if not len(classes) or not batches:
            return

        def agreement(batch: SyntheticBatch) -> np.ndarray:
            predicted = node.learner.predict(batch.x).argmax(axis=1) if len(batch.y) else batch.y
            return np.array([np.mean(predicted[batch.y == c] == c) if np.any(batch.y == c) else np.nan
                             for c in classes])

        rates = np.stack([agreement(b) for b in (self._own, *batches.values())])  # own row: no NaN
        rates = np.where(np.isnan(rates), np.nanmedian(rates, axis=0), rates)
        # honest peers often agree on every sample: the typical distance may be 0, so 10 points of
        # disagreement per class count as typical (an outlier then sits >= 30 points off)
        node.judge(rates[0], dict(zip(batches, rates[1:])), min_scale=0.1 * np.sqrt(len(classes)))


class Mixed(Exchange):
    """Weight averaging among peers of the same architecture plus distillation across all."""

    name = "mixed"

    def __init__(self, weights: WeightGossip, distill: Distillation) -> None:
        self.parts = (weights, distill)
        self.consumes = weights.consumes + distill.consumes

    def publish(self, node: NodeView, version: int) -> list[Payload]:
        return [p for part in self.parts for p in part.publish(node, version)]

    def receive(self, node: NodeView, message: Message) -> str | None:
        reasons = [part.receive(node, message) for part in self.parts]  # a part refuses only its own kind
        return next((r for r in reasons if r), None)

    def fold(self, node: NodeView) -> Folded:
        return Folded.of([part.fold(node) for part in self.parts])  # weights first, then distillation

    def start(self, node: NodeView) -> None:
        for part in self.parts:
            part.start(node)

    def largest_payload(self, node: NodeView) -> int:
        return max(part.largest_payload(node) for part in self.parts)
