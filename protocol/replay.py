"""Replay guard: a sliding window of sequence numbers per sender plus a timestamp skew bound.
Pure: the caller hands in `now_ms`."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Reason, RejectedMessage


@dataclass
class _Window:
    highest: int
    seen: int  # bit i set <=> sequence number highest - i was accepted


@dataclass
class ReplayGuard:
    window: int = 1024  # how far out of order a sequence number may arrive
    max_skew_ms: int = 5 * 60 * 1000
    _senders: dict[bytes, _Window] = field(default_factory=dict)

    def check(self, sender: bytes, seq: int, ts_ms: int, now_ms: int) -> None:
        """Raise RejectedMessage if (seq, ts) must not be accepted; records nothing."""
        if abs(ts_ms - now_ms) > self.max_skew_ms:
            raise RejectedMessage(Reason.STALE, f"timestamp {ts_ms} is {ts_ms - now_ms:+d} ms from now")
        state = self._senders.get(sender)
        if state is None or seq > state.highest:
            return
        age = state.highest - seq
        if age >= self.window:
            raise RejectedMessage(Reason.REPLAYED, f"sequence {seq} is below the window (highest {state.highest})")
        if state.seen >> age & 1:
            raise RejectedMessage(Reason.REPLAYED, f"sequence {seq} was already seen")

    def record(self, sender: bytes, seq: int) -> None:
        state = self._senders.get(sender)
        if state is None:
            self._senders[sender] = _Window(seq, 1)
        elif seq > state.highest:
            # A jump of a window or more leaves no earlier number inside it; shifting by the jump
            # itself would build an integer of up to 2**64 bits (MemoryError) for a signed seq jump.
            shift = seq - state.highest
            mask = (1 << self.window) - 1
            state.seen = ((state.seen << shift) | 1) & mask if shift < self.window else 1
            state.highest = seq
        elif state.highest - seq < self.window:  # below the window: nothing to record
            state.seen |= 1 << (state.highest - seq)

    def highest(self, sender: bytes) -> int | None:
        state = self._senders.get(sender)
        return None if state is None else state.highest

    def to_state(self) -> dict[bytes, tuple[int, int]]:
        return {s: (w.highest, w.seen) for s, w in self._senders.items()}

    @classmethod
    def from_state(cls, state: dict[bytes, tuple[int, int]], **kwargs) -> ReplayGuard:
        guard = cls(**kwargs)
        guard._senders = {s: _Window(h, seen) for s, (h, seen) in state.items()}
        return guard
