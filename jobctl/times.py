"""Durations and points in time as jobctl's options take them.

    duration   90s  15m  12h  30d  2w  1h30m   (a number and a unit, or several)
    time       1795000000                       UNIX time
               2026-11-22  2026-11-22T07:30  2026-11-22 07:30:15   local time
               2026-11-22T07:30:00+01:00                          with an offset

Errors are click usage errors (exit status 2) naming the option.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import click

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str, option: str, bare_seconds: bool = False) -> float:
    """Seconds of `text` (`bare_seconds`: a plain number counts as seconds)."""
    value = text.strip().lower()
    if bare_seconds and re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    if not _DURATION.fullmatch(value):
        raise click.UsageError(f"{option}: expected a duration such as 90s, 15m, 12h, 30d")
    return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))


def parse_time(text: str, option: str) -> float:
    """A UNIX time from a UNIX time or an ISO 8601 date/time (local time unless it has
    an offset)."""
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.UsageError(
            f"{option}: expected a UNIX time or a date and time such as 2026-11-22T07:30"
        ) from None


def parse_since(text: str, option: str) -> float:
    """`--since`: a duration back from now (`1h`, `7d`), or a point in time."""
    value = text.strip().lower()
    if _DURATION.fullmatch(value):
        return time.time() - parse_duration(value, option)
    return parse_time(text, option)
