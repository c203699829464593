"""Settling the rows of a worker instance that will not write them again, by the rules
of a restart: its accepted rows go back to waiting, its reserved manual rows back to
manual, and each running row back to waiting while it may run again, else to done/fail
with the reason in stderr.  A rescue (the instance stopped heartbeating), a worker's
restart and `jobctl recover` all settle with `settle_rows`, inside their transaction.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobd.store.queries import HELD_BY, SettleQueries

#: Why a running row may not run again (a reason for stderr), or None: it goes back to
#: waiting.  Called with the row's target, its attempts and its rescues so far.
Decide = Callable[[str, int, int], str | None]
#: Fills a query template (Database._sql) with the `{held}` fragment.
Fill = Callable[..., str]


@dataclass
class Settled:
    """What a settlement did with an instance's rows."""

    released: int = 0  # accepted or reserved rows given back
    retried: list[int] = field(default_factory=list)  # running rows back to waiting
    failed: list[int] = field(default_factory=list)  # running rows settled as failed
    #: Targets with rows back to waiting: their workers are poked.
    targets: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.released or self.retried or self.failed)

    def add(self, other: Settled) -> None:
        self.released += other.released
        self.retried += other.retried
        self.failed += other.failed
        self.targets |= other.targets


def rescue_rules(targets: Mapping[str, Mapping[str, Any]]) -> Decide:
    """The rules of the targets an instance recorded: a running job runs again while it
    has starts left (max_attempts), its target's on_rescue is retry, and it has not been
    taken back from a dead worker more than max_rescues times (a job that kills its host
    every time stops there)."""

    def decide(target: str, attempts: int, rescues: int) -> str | None:
        options = targets.get(target) or {}
        max_rescues = int(options.get("max_rescues", 3))
        if rescues + 1 > max_rescues:
            return f"failed after {rescues + 1} rescues (max_rescues {max_rescues})"
        if options.get("on_rescue", "retry") == "fail":
            return "the target's on_rescue is fail"
        if attempts >= int(options.get("max_attempts", 1)):
            return ""
        return None

    return decide


async def settle_rows(
    execute: Callable[[str, Any], Awaitable[int]],
    fetch: Callable[[], Awaitable[Any]],
    fill: Fill,
    held_by: str,
    holder: str,
    reason: str,
    decide: Decide,
) -> Settled:
    """Settle the rows `HELD_BY[held_by]` selects with `holder`, on one cursor inside the
    caller's transaction (`execute(sql, params)` -> rows affected, `fetch()` -> rows)."""
    held = HELD_BY[held_by]
    settled = Settled()

    def sql(query: str) -> str:
        return fill(query, held=held)

    await execute(sql(SettleQueries.reserved_targets), (holder,))
    settled.targets = {row[0] for row in await fetch()}
    settled.released = await execute(sql(SettleQueries.release_reserved), (holder,))
    await execute(sql(SettleQueries.select_running), (holder,))
    now = int(time.time())
    for job_id, target, attempts, rescues in await fetch():
        verdict = decide(target, attempts, rescues)
        if verdict is None:
            line = f"attempt {attempts}: {reason}\n"
            if await execute(sql(SettleQueries.retry), (line, job_id, holder)):
                settled.retried.append(job_id)
                settled.targets.add(target)
        else:
            why = f"{reason}; {verdict}" if verdict else reason
            if await execute(sql(SettleQueries.fail), (now, f"\njobd: {why}\n", job_id, holder)):
                settled.failed.append(job_id)
    return settled
