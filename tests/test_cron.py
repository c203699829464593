"""Cron maths on their own (no database, no clock): jobd.cron."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobd.cron import MISFIRE_GRACE, Rule, due_fires, first_fire


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def test_cron_next_fire_in_utc_and_in_a_time_zone():
    every_day = Rule(cron="30 2 * * *")
    assert every_day.next_after(ts("2026-03-28T00:00:00")) == ts("2026-03-28T02:30:00")
    berlin = Rule(cron="30 2 * * *", timezone="Europe/Berlin")
    # 02:30 Berlin time is 01:30 UTC in winter.
    assert berlin.next_after(ts("2026-01-10T00:00:00")) == ts("2026-01-10T01:30:00")
    assert first_fire(Rule(cron="*/5 * * * *"), ts("2026-01-01T00:01:00")) == ts(
        "2026-01-01T00:05:00"
    )


def test_interval_keeps_its_phase():
    rule = Rule(interval=60)
    anchor = ts("2026-01-01T00:00:10")
    assert rule.next_after(anchor, anchor=anchor) == anchor + 60
    assert rule.next_after(anchor + 59.9, anchor=anchor) == anchor + 60
    assert rule.next_after(anchor + 60, anchor=anchor) == anchor + 120
    assert rule.next_after(anchor - 5, anchor=anchor) == anchor
    assert first_fire(rule, 1000.5) == 1060


def test_a_fire_due_now_fires_at_once_and_one_not_yet_due_waits():
    rule = Rule(interval=60)
    fires, upcoming = due_fires(rule, next_fire=1000, now=1000.2, catch_up="skip")
    assert (fires, upcoming) == ([1000], 1060)
    assert due_fires(rule, next_fire=1000, now=999.0, catch_up="once") == ([], 1000)


@pytest.mark.parametrize(("catch_up", "expected"), [("once", [1000 + 600 * 50]), ("skip", [])])
def test_fires_missed_while_down_are_caught_up_once_or_skipped(catch_up, expected):
    rule = Rule(interval=600)
    # Down for hours: 51 fire times were missed, the latest 200 s ago (past the grace).
    now = 1000 + 600 * 50 + 200
    assert MISFIRE_GRACE < 200
    fires, upcoming = due_fires(rule, next_fire=1000, now=now, catch_up=catch_up)
    assert fires == expected
    assert upcoming == 1000 + 600 * 51


def test_long_downtime_does_not_walk_forever():
    rule = Rule(cron="* * * * *")
    start = ts("2025-01-01T00:00:00")
    now = ts("2026-01-01T00:00:30")
    fires, upcoming = due_fires(rule, next_fire=start, now=now, catch_up="once")
    assert fires == [ts("2026-01-01T00:00:00")]
    assert upcoming == ts("2026-01-01T00:01:00")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Rule(), "either a cron expression or an interval"),
        (Rule(cron="* * * * *", interval=5), "either"),
        (Rule(interval=0), "at least 1 second"),
        (Rule(cron="61 * * * *"), "not a cron expression"),
        (Rule(cron="* * * * *", timezone="Mars/Olympus"), "unknown time zone"),
    ],
)
def test_an_invalid_rule_is_refused_saying_why(rule, message):
    with pytest.raises(ValueError, match=message):
        rule.validate()
