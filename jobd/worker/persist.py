"""The worker's rule for database writes: a result is never dropped.  A write that fails
because the database is away is retried with backoff until it succeeds; one the
database refuses as it is (bad data) is raised for the caller to handle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from jobd.runtime.backoff import Backoff
from jobd.store.pool import StorageError

log = logging.getLogger("jobd.worker")
T = TypeVar("T")


async def persist(what: str, operation: Callable[[], Awaitable[T]]) -> T:
    """Run a database operation until it succeeds; raise its non-retryable errors."""
    backoff = Backoff()
    while True:
        try:
            return await operation()
        except StorageError as exc:
            if not exc.retryable:
                raise
            delay = backoff.next()
            log.warning("%s failed, retrying in %.1f s: %s", what, delay, exc)
            await asyncio.sleep(delay)
