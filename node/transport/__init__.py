from .base import Receiver, Transport
from .memory import LinkModel, MemoryNetwork, MemoryTransport

__all__ = ["LinkModel", "MemoryNetwork", "MemoryTransport", "Receiver", "Transport"]
