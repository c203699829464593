"""The work a worker's shutdown waits for: helper tasks (claims by id, marking rows
running, giving rows back) and every job until its outcome is queued for writing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


class InFlight:
    def __init__(self) -> None:
        self.futures: set[asyncio.Future[Any]] = set()

    def __bool__(self) -> bool:
        return bool(self.futures)

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        self.track(asyncio.ensure_future(awaitable))

    def track(self, future: asyncio.Future[Any]) -> None:
        self.futures.add(future)
        future.add_done_callback(self.futures.discard)

    async def wait(self, timeout: float | None = None) -> None:
        """Until all of it is done, or `timeout` seconds passed."""
        if self.futures:
            await asyncio.wait(set(self.futures), timeout=timeout)
