"""Waiting for jobs to finish: events first, the rows as the truth.

    1. subscribe to the jobs' events on the master's PUB socket (if it answers);
    2. read the rows once: jobs that are finished already are done;
    3. on each `finished` event, read that job's row (the worker sends the event after
       writing the row, so the row has the outcome and the output);
    4. read the rows of the jobs still pending every EVENTS_RECHECK seconds anyway: an
       event can be lost (the master restarted, the worker has no master, a row was
       `ignored`, which has no event).

Without an events endpoint that answers, step 3 never happens and step 4 runs every
POLL_INTERVAL seconds instead: a slow loop, never a tight one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from typing import Any

from jobd.store.catalog import JobCatalog, outcome_of
from jobd.wire.subscription import Subscription

#: Seconds between reads of the pending rows when no events endpoint answers.
POLL_INTERVAL = 1.0
#: Seconds between reads of the pending rows while events arrive (lost events).
EVENTS_RECHECK = 5.0


class JobNotFound(LookupError):
    """Some of the jobs waited for have no row."""

    def __init__(self, ids: Iterable[int]) -> None:
        self.ids = sorted(ids)
        super().__init__(f"no such job: {', '.join(map(str, self.ids))}")


class WaitTimeout(TimeoutError):
    """Not every job finished in time; `done` holds the outcomes of those that did."""

    def __init__(self, pending: Collection[int], done: dict[int, dict[str, Any]]) -> None:
        self.pending = sorted(pending)
        self.done = done
        super().__init__(f"{len(self.pending)} jobs not finished: {self.pending[:10]}")


async def wait_for_jobs(
    catalog: JobCatalog,
    ids: Collection[int],
    subscription: Subscription | None,
    timeout: float | None = None,
    on_finished: Callable[[dict[str, Any]], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """{id: outcome} of every job of `ids` once all have finished (see the module's
    docstring).  `subscription` must have been made before this is called, for `ids`.

    Raises JobNotFound for ids without a row and WaitTimeout after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pending = set(ids)
    done: dict[int, dict[str, Any]] = {}

    async def read(which: Collection[int]) -> None:
        for job_id, row in (await catalog.finished(list(which))).items():
            if job_id in pending:
                pending.discard(job_id)
                done[job_id] = outcome_of(row)
                if on_finished is not None:
                    on_finished(done[job_id])

    missing = pending - await catalog.existing(list(pending))
    if missing:
        raise JobNotFound(missing)
    await read(pending)
    recheck = EVENTS_RECHECK if subscription is not None else POLL_INTERVAL
    next_read = loop.time() + recheck
    while pending:
        now = loop.time()
        if deadline is not None and now >= deadline:
            raise WaitTimeout(pending, done)
        until = next_read if deadline is None else min(next_read, deadline)
        if subscription is None:
            await asyncio.sleep(until - now)
        else:
            finished = await _finished_events(subscription, pending, until - now)
            if finished:
                await read(finished)
                continue
        if loop.time() >= next_read:
            await read(pending)
            next_read = loop.time() + recheck
    return done


async def _finished_events(
    subscription: Subscription, pending: Collection[int], window: float
) -> set[int]:
    """Ids of pending jobs whose `finished` event arrives within `window` seconds; once
    one has, also those of the events already queued behind it (one read for a burst)."""
    finished: set[int] = set()
    while True:
        event = await subscription.receive(0.0 if finished else max(window, 0.0))
        if event is None:
            return finished
        if event.get("event") == "finished" and event["id"] in pending:
            finished.add(event["id"])
