"""What a node sends and what it does with what it receives. One class per kind of knowledge;
the node calls publish -> (messages arrive: receive) -> fold."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from manymodels.aggregation import RuleError
from manymodels.protocol import Message, Payload, Weights

if TYPE_CHECKING:
    from .node import Node


class Exchange(ABC):
    name: str

    @abstractmethod
    def publish(self, node: Node) -> list[Payload]:
        """Payloads to sign and send to every neighbour now."""

    @abstractmethod
    def receive(self, node: Node, message: Message) -> None:
        """Keep a verified message for the next fold."""

    @abstractmethod
    def fold(self, node: Node) -> bool:
        """Combine what was received into the node's learner; True if the model changed."""


class WeightGossip(Exchange):
    """Asynchronous weight gossip: fold the newest weights from each peer, received since the
    last fold, together with one's own through the node's rule."""

    name = "weights"

    def __init__(self) -> None:
        self._inbox: dict[bytes, Weights] = {}

    def publish(self, node: Node) -> list[Payload]:
        learner = node.learner
        return [Weights(learner.architecture, node.version, learner.num_examples, learner.get_weights())]

    def receive(self, node: Node, message: Message) -> None:
        payload = message.payload
        if not isinstance(payload, Weights):
            return
        if payload.model != node.learner.architecture:
            node.stats.ignored["other_architecture"] += 1
            return
        own = node.shapes
        if [tuple(t.shape) for t in payload.tensors] != own:
            node.stats.ignored["shape_mismatch"] += 1
            return
        previous = self._inbox.get(message.sender)
        if previous is None or payload.version >= previous.version:
            self._inbox[message.sender] = payload

    def fold(self, node: Node) -> bool:
        if not self._inbox:
            return False
        own = node.learner.get_weights()
        results = [(own, float(node.learner.num_examples))]
        results += [(w.tensors, float(w.num_examples)) for w in self._inbox.values()]
        self._inbox.clear()
        try:
            merged = node.rule(results, reference=own)
        except RuleError as exc:  # too few inputs this round (loss, churn): keep the local model
            node.stats.ignored[f"rule: {exc}"[:80]] += 1
            return False
        node.learner.set_weights(merged)
        return True


EXCHANGES = {"weights": WeightGossip}


def make_exchange(name: str) -> Exchange:
    if name not in EXCHANGES:
        raise ValueError(f"unknown exchange {name!r}; available: {', '.join(EXCHANGES)}")
    return EXCHANGES[name]()
