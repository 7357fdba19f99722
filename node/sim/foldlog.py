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
from manymodels.protocol import Message

from ..core.exchange import Exchange, Folded, WeightGossip, flat_rows, split_rows
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

    def coalition_weights(self) -> Callable[[list[Set[bytes]]], NDArrays] | None:
        """A list of sets of `senders` -> the weights `refold` would give this node's model with each,
        each tensor stacked over the coalitions, (coalitions, *shape); without replaying: for the
        weights exchange with a built-in rule (a pure function, no state between calls), each message
        is decoded once, here, and a coalition's weights are the exchange's merge of those arrays
        (what its fold computes); a linear rule's, its coefficients times the arrays. None for any
        other exchange or rule: `refold` replays those."""
        if not (isinstance(self._before, WeightGossip) and self._before.builtin_rule):
            return None
        rule = self._before.rule
        exchange, view = copy.deepcopy(self._before), self._replay_view(self.learner)
        for message in self.received:
            exchange.receive(view, message)
        own = self.learner.get_weights()
        decoded = exchange.take_decoded(own)

        def taken(senders: Set[bytes]) -> dict[bytes, tuple[NDArrays, int]]:
            """What a fold with only these senders merges, in the fold's order."""
            return {peer: one for peer, one in decoded.items() if peer in senders and peer not in view.banned}

        def merged(senders: Set[bytes]) -> NDArrays:
            peers = taken(senders)
            weights = exchange.merge(view, own, peers) if peers else None
            return own if weights is None else weights
        if rule.definition.coefficients is None:
            return lambda coalitions: [np.stack(t) for t in zip(*(merged(senders) for senders in coalitions))]
        column = {peer: k + 1 for k, peer in enumerate(decoded)}  # column 0: the node's own weights

        def coefficients(senders: Set[bytes]) -> np.ndarray:
            peers, row = taken(senders), np.zeros(len(decoded) + 1)
            found = exchange.coefficients(view, [count for _, count in peers.values()]) if peers else None
            if found is None:  # nobody, or too few for the rule: the model as it is
                row[0] = 1.0
            else:
                row[[0, *map(column.get, peers)]] = found
            return row
        combine = _combinations([own, *(tensors for tensors, _ in decoded.values())])
        return lambda coalitions: combine(np.array([coefficients(senders) for senders in coalitions]))


def _combinations(inputs: list[NDArrays]) -> Callable[[np.ndarray], NDArrays]:
    """(coalitions, inputs) coefficients -> the coalitions' weights, stacked per tensor: one matrix
    product with the inputs, float64 as a rule sums them, cast back to each tensor's dtype."""
    flat = flat_rows(inputs)

    def combine(coefficients: np.ndarray) -> NDArrays:
        out = np.empty((len(coefficients), flat.shape[1]))
        for start in range(0, flat.shape[1], _COLUMNS):
            part = slice(start, start + _COLUMNS)
            np.matmul(coefficients, flat[:, part], out=out[:, part])
        return split_rows(out, inputs[0])
    return combine
