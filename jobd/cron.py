"""When recurring schedules fire: pure functions over UNIX times, no I/O.

A schedule is a cron expression (in a time zone, parsed by croniter) or a fixed
interval in seconds.  The scheduler stores each schedule's next fire time; when it
comes due, `due_fires` says which fire times get a job now and when the next one is.

Downtime: fire times more than MISFIRE_GRACE seconds in the past were missed. With
catch_up 'once' (the default) the latest missed fire time gets one job, however many
were missed; with 'skip' missed fire times get none.  A fire time that is due but not
missed (the scheduler is merely a moment late) always gets its job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

#: Seconds after its time a fire is still on time rather than missed.
MISFIRE_GRACE = 60
CATCH_UP_POLICIES = ("once", "skip")
#: Most fire times walked through when looking for the latest missed one (a minutely
#: schedule down for a year is 525,600; beyond the cap the walk jumps).
_MAX_WALK = 10_000


@dataclass(frozen=True)
class Rule:
    """How often a schedule fires: exactly one of `cron` and `interval`."""

    cron: str | None = None
    interval: int | None = None
    timezone: str = "UTC"

    def validate(self) -> None:
        """Raise ValueError with a message for people."""
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give either a cron expression or an interval")
        if self.interval is not None and self.interval < 1:
            raise ValueError("the interval must be at least 1 second")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ValueError(f"not a cron expression: {self.cron!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone: {self.timezone!r}") from None

    def next_after(self, after: float, anchor: int | None = None) -> int:
        """The first fire time strictly after `after`.  Interval schedules keep their
        phase: fire times are anchor + k * interval."""
        if self.interval is not None:
            if anchor is None:
                return math.floor(after) + self.interval
            if after < anchor:
                return anchor
            return anchor + (math.floor((after - anchor) / self.interval) + 1) * self.interval
        assert self.cron is not None
        start = datetime.fromtimestamp(after, UTC).astimezone(ZoneInfo(self.timezone))
        return int(croniter(self.cron, start).get_next(float))


def due_fires(rule: Rule, next_fire: int, now: float, catch_up: str) -> tuple[list[int], int]:
    """The fire times that get a job now, and the schedule's new next fire time."""
    if next_fire > now:
        return [], next_fire
    # Walk to the latest fire time that is not in the future.
    latest = next_fire
    for _ in range(_MAX_WALK):
        following = rule.next_after(latest, anchor=next_fire)
        if following > now:
            break
        latest = following
    else:
        latest = _latest_before(rule, now, next_fire)
    upcoming = rule.next_after(latest, anchor=next_fire)
    if now - latest <= MISFIRE_GRACE or catch_up == "once":
        return [latest], upcoming
    return [], upcoming


def _latest_before(rule: Rule, now: float, anchor: int) -> int:
    """The latest fire time <= now, for long downtimes (no walk)."""
    if rule.interval is not None:
        return anchor + math.floor((now - anchor) / rule.interval) * rule.interval
    assert rule.cron is not None
    start = datetime.fromtimestamp(now + 1, UTC).astimezone(ZoneInfo(rule.timezone))
    return int(croniter(rule.cron, start).get_prev(float))


def first_fire(rule: Rule, now: float) -> int:
    """The next fire time of a new schedule."""
    return rule.next_after(now)
