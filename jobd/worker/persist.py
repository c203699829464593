"""The worker's rule for database writes: a result is never dropped.  A write that fails
because the database is away is retried with backoff until it succeeds; one the
database refuses as it is (bad data) is raised for the caller to handle."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from jobd.runtime.backoff import Backoff
from jobd.store.pool import StorageError

log = logging.getLogger("jobd.worker")
T = TypeVar("T")


class PersistCounts:
    """What the retries cost so far, for the metrics: failures by operation, and the
    operations that went through after failing (the database back)."""

    def __init__(self) -> None:
        self.failures: collections.Counter[str] = collections.Counter()
        self.recovered = 0


COUNTS = PersistCounts()


async def persist(what: str, operation: Callable[[], Awaitable[T]]) -> T:
    """Run a database operation until it succeeds; raise its non-retryable errors."""
    backoff = Backoff()
    failed = False
    while True:
        try:
            result = await operation()
        except StorageError as exc:
            COUNTS.failures[what] += 1
            if not exc.retryable:
                raise
            failed = True
            delay = backoff.next()
            log.warning("%s failed, retrying in %.1f s: %s", what, delay, exc)
            await asyncio.sleep(delay)
            continue
        if failed:
            COUNTS.recovered += 1
        return result
