"""The two interfaces a network implements (memory for the simulator, libp2p for the daemon), each
with a contract test both pass (tests/test_transport_contract.py).

* ``Transport``: what a node needs -- its address, ``send``, and a receiver for what arrives.
* ``PeerNetwork``: how a node meets peers -- dial an address, who is connected, where it listens,
  and the hooks discovery uses to dial later (where a peer listens).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

Receiver = Callable[[str, bytes], None]  # (sender's address, raw bytes)


@runtime_checkable
class Transport(Protocol):
    address: str

    def send(self, peer: str, data: bytes) -> None:
        """Queue bytes for a peer; never blocks, never raises for an unreachable peer."""

    def set_receiver(self, receiver: Receiver) -> None:
        """Register the callback that gets every inbound message, with its sender's address."""


@runtime_checkable
class PeerNetwork(Protocol):
    address: str

    async def connect(self, address: str) -> str:
        """Dial a peer at one of its listen addresses; returns its address (peer id). ValueError
        for an address that is malformed or this node's own; ConnectionError when the dial fails."""

    def connected_peers(self) -> list[str]:
        """The peers this node is connected to, sorted."""

    def listen_addrs(self) -> list[str]:
        """Where this node can be dialed (each one works with another node's ``connect``)."""

    def add_peer_addrs(self, peer: str, addrs: Sequence[str]) -> None:
        """Remember where a peer listens, so that it can be dialed (and sent to) later."""

    def peer_addrs(self, peer: str) -> list[str]:
        """Where this node believes a peer listens."""
