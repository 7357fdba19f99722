"""A trio service: `await nursery.start(x.run)` serves until `await x.close()`."""
from __future__ import annotations

from contextlib import asynccontextmanager

import trio


class TrioService:
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    @asynccontextmanager
    async def running(self):
        """``async with x.running():`` -- run in a nursery of its own, close on exit."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self
            finally:
                await self.close()
