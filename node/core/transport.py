"""The one small interface every transport implements (memory for the simulator, libp2p for the daemon)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Receiver = Callable[[str, bytes], None]  # (sender's address, raw bytes)


class Transport(Protocol):
    address: str

    def send(self, peer: str, data: bytes) -> None:
        """Queue bytes for a peer; never blocks, never raises for an unreachable peer."""

    def set_receiver(self, receiver: Receiver) -> None:
        """Register the callback that gets every inbound message."""
