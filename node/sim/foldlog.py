"""A node that keeps what its next fold takes from, so that fold can be replayed with only some of
its senders: the one-run data-value estimate (studies/value_study.py) reconstructs the model a node
would have had in a smaller network from what it folded in the real one, without retraining. For the
weights exchange with a built-in rule the replay needs no exchange at all: the messages are decoded
once and each coalition's weights are the rule's combination of them (`coalition_weights`)."""
from __future__ import annotations

import copy
from collections.abc import Callable, Set
from dataclasses import replace

import numpy as np

from manymodels.aggregation import NDArrays
from manymodels.aggregation.registry import BUILTINS
from manymodels.protocol import Message

from ..core.exchange import Exchange, Folded, WeightGossip
from ..core.node import Node
from ..learning.learner import Learner


# Columns per matrix product of coalitions' coefficients and inputs: small enough products that
# OpenBLAS runs each on one thread (its threads stall while other processes keep the cores busy, as
# aggregation/weights.py's _combine found), 4x faster here than one product or einsum.
_COLUMNS = 512


class LoggedNode(Node):
    """A node with the verified messages it received since its last fold, and its exchange as it
    was before the first of them (so a replay starts from the same rule state)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[Message] = []
        self._before: Exchange = copy.deepcopy(self.exchange)

    def handle(self, sender_address: str, message: Message) -> None:
        if not self.received:
            self._before = copy.deepcopy(self.exchange)
        self.received.append(message)
        super().handle(sender_address, message)

    def fold(self) -> Folded:
        self.received = []
        return super().fold()

    def _replay_view(self, learner: Learner):
        return replace(self.view, learner=learner, judge=lambda *args, **kwargs: None)

    def refold(self, learner: Learner, senders: Set[bytes]) -> None:
        """Fold into `learner`, a copy of this node's model before its fold, only what `senders`
        (public keys, as `Message.sender`) sent: the fold had only they been its neighbours. It
        judges nobody (a replay must not move reputations)."""
        exchange = copy.deepcopy(self._before)
        view = self._replay_view(learner)
        for message in self.received:
            if message.sender in senders:
                exchange.receive(view, message)
        exchange.fold(view)

    def coalition_weights(self) -> Callable[[list[Set[bytes]]], list[NDArrays]] | None:
        """A list of sets of `senders` -> the weights `refold` would give this node's model with each,
        without replaying: for the weights exchange with a built-in rule (a pure function, no state
        between calls), each message is decoded once, here, and a coalition's weights are the
        exchange's merge of those arrays (what its fold computes). None for any other exchange or
        rule: `refold` replays those."""
        rule = self._before.rule if isinstance(self._before, WeightGossip) else None
        if rule is None or rule.name not in BUILTINS or rule.fn is not BUILTINS[rule.name].fn:
            return None
        exchange, view = copy.deepcopy(self._before), self._replay_view(self.learner)
        for message in self.received:
            exchange.receive(view, message)
        own = self.learner.get_weights()
        decoded = exchange.take_decoded(own)

        def merged(inputs: dict[bytes, tuple[NDArrays, int]], own: NDArrays, senders: Set[bytes]) -> NDArrays:
            peers = {peer: one for peer, one in inputs.items() if peer in senders and peer not in view.banned}
            merged = exchange.merge(view, own, peers) if peers else None
            return own if merged is None else merged
        if not rule.definition.linear:
            return lambda coalitions: [merged(decoded, own, senders) for senders in coalitions]
        # A linear rule's merge of unit vectors is its coefficients: every coalition's weights at once,
        # as one matrix product with the inputs, float64 as the rule sums them.
        units = np.eye(len(decoded) + 1)
        unit_inputs = {peer: ([units[k + 1]], count) for k, (peer, (_, count)) in enumerate(decoded.items())}
        inputs = np.array([np.concatenate([np.ravel(t) for t in tensors])
                           for tensors in [own, *(tensors for tensors, _ in decoded.values())]], dtype=np.float64)
        ends = np.cumsum([t.size for t in own])

        def combined(coalitions: list[Set[bytes]]) -> list[NDArrays]:
            coefficients = np.array([merged(unit_inputs, [units[0]], senders)[0] for senders in coalitions])
            out = np.empty((len(coalitions), inputs.shape[1]))
            for start in range(0, inputs.shape[1], _COLUMNS):
                part = slice(start, start + _COLUMNS)
                np.matmul(coefficients, inputs[:, part], out=out[:, part])
            tensors = [t.astype(o.dtype).reshape(-1, *o.shape) for t, o in zip(np.split(out, ends[:-1], axis=1), own)]
            return [list(one) for one in zip(*tensors)]
        return combined
