"""Polling waits for tests, one deadline rule for all: check, and on timeout fail with what was
awaited and the last value seen. `wait_until` sleeps (for daemons in other processes: a few learning
cycles, 120 s by default); `async_wait_until` yields to trio (for nodes in the test's own event loop,
20 s by default).

`observe` returns what to look at; `until` decides whether it is what we wait for (by default: any
truthy value). The value seen last is returned, so a wait can hand on what it waited for:

    s = wait_until(lambda: status(home), "two peers", 60, until=lambda s: s["peers"] == 2)
"""
from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A wait that ran out of time; an AssertionError, so pytest shows it as a failed check."""


def _polls(observe: Callable[[], T], what: str, timeout: float, until: Callable[[T], Any],
           interval: float) -> Generator[float, None, T]:
    """Yields the pause before the next check; returns the value that met `until`."""
    deadline = time.monotonic() + timeout
    while True:
        value = observe()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}; last seen: {value!r}")
        yield interval


def wait_until(observe: Callable[[], T], what: str, timeout: float = 120.0, *,
               until: Callable[[T], Any] = bool, interval: float = 0.5) -> T:
    polls = _polls(observe, what, timeout, until, interval)
    try:
        while True:
            time.sleep(next(polls))
    except StopIteration as met:
        return met.value


async def async_wait_until(observe: Callable[[], T], what: str, timeout: float = 20.0, *,
                           until: Callable[[T], Any] = bool, interval: float = 0.02) -> T:
    import trio

    polls = _polls(observe, what, timeout, until, interval)
    try:
        while True:
            await trio.sleep(next(polls))
    except StopIteration as met:
        return met.value


def unchanged() -> Callable[[Any], bool]:
    """An `until` for "has stopped changing": true when a check sees what the check before it saw."""
    seen: list[Any] = []

    def same_as_before(value: Any) -> bool:
        settled = seen == [value]
        seen[:] = [value]
        return settled
    return same_as_before
