"""A trio service: `await nursery.start(x.run)` serves until `await x.close()`, or ``async with x.running()``.

One piece of start/stop for the libp2p transport and discovery. A subclass says what it opens
(``_open``: contexts entered on an exit stack, closed in reverse when the service stops) and what
it runs (``_start``: tasks in the service's nursery); this base runs once, marks it running,
waits for ``close()``, cancels the tasks, and lets calls from other threads in through
``call_in_loop``."""
from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AsyncExitStack, asynccontextmanager

import trio


class TrioService:
    def __init__(self) -> None:
        self._ran = False
        self._running = False
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: int | None = None

    async def _open(self, stack: AsyncExitStack) -> None:
        """Open what the service needs (enter it on ``stack``); raise to refuse to start."""

    def _start(self, nursery: trio.Nursery) -> None:
        """Start the service's tasks."""

    def _closed(self) -> None:
        """Called once the service has stopped, whatever the reason."""

    @property
    def is_running(self) -> bool:
        return self._running

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Open, start the tasks, report started, and serve until close() (or until cancelled)."""
        if self._ran:
            raise RuntimeError(f"a {type(self).__name__} runs once")
        self._ran = True
        try:
            async with AsyncExitStack() as stack:
                await self._open(stack)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._token = trio.lowlevel.current_trio_token()
                    self._thread = threading.get_ident()
                    self._start(nursery)
                    self._running = True
                    task_status.started()
                    try:
                        await self._stop.wait()
                    finally:
                        self._running = False
                        nursery.cancel_scope.cancel()
        finally:
            self._running = False
            self._closed()
            self._stopped.set()

    async def close(self) -> None:
        """Stop serving; returns once everything the service opened is closed."""
        self._stop.set()
        if self._ran:
            await self._stopped.wait()

    @asynccontextmanager
    async def running(self):
        """``async with x.running():`` -- run in a nursery of its own, close on exit."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self
            finally:
                await self.close()

    def call_in_loop(self, fn: Callable, *args, ended: Callable[[], object] | None = None):
        """``fn(*args)`` on the service's trio thread. Called there (or before the service runs):
        now, returning what fn returns. Called from another thread: handed over, returning True;
        or, when the run has ended, fn is not called: ``ended()`` is, and False returned."""
        if self._thread is None or threading.get_ident() == self._thread:
            return fn(*args)
        try:
            self._token.run_sync_soon(fn, *args)
        except Exception:  # noqa: BLE001 -- the run has ended
            if ended is not None:
                ended()
            return False
        return True
