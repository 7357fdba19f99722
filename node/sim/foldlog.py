"""A node that keeps what its next fold takes from, so that fold can be replayed with only some of
its senders: the one-run data-value estimate (studies/value_study.py) reconstructs the model a node
would have had in a smaller network from what it folded in the real one, without retraining."""
from __future__ import annotations

import copy
from collections.abc import Set
from dataclasses import replace

from manymodels.protocol import Message

from ..core.exchange import Exchange, Folded
from ..core.node import Node
from ..learning.learner import Learner


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

    def refold(self, learner: Learner, senders: Set[bytes]) -> None:
        """Fold into `learner`, a copy of this node's model before its fold, only what `senders`
        (public keys, as `Message.sender`) sent: the fold had only they been its neighbours. It
        judges nobody (a replay must not move reputations)."""
        exchange = copy.deepcopy(self._before)
        view = replace(self.view, learner=learner, judge=lambda *args, **kwargs: None)
        for message in self.received:
            if message.sender in senders:
                exchange.receive(view, message)
        exchange.fold(view)
