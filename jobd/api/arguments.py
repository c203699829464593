"""The arguments of the job API, checked before anything is sent: a bad one is a
ValueError with a message that names it (the protocol's own checks where they apply)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from jobd.config import URL_PATTERN
from jobd.wire import checks
from jobd.wire.protocol import RequestError

PRIORITY_RANGE = range(-32768, 32768)  # the column is a smallint


def check_value(check: Callable[[Any, str], Any], value: Any, key: str) -> None:
    """A protocol check as a ValueError (the natural error of a Python API)."""
    try:
        check(value, key)
    except RequestError as exc:
        raise ValueError(exc.message) from None


def check_target_and_slot(target: str, slot: str | None) -> None:
    check_value(checks.check_name, target, "target")
    if slot is not None:
        check_value(checks.check_name, slot, "slot")


def check_priority(priority: Any) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError("priority: expected an integer")
    if priority not in PRIORITY_RANGE:
        raise ValueError(f"priority: must be between {PRIORITY_RANGE[0]} and 32767")


def run_at_of(at: float | None, delay: float | None) -> int | None:
    """The not-before time of `at` (UNIX time) or `delay` (seconds from now)."""
    if at is not None and delay is not None:
        raise ValueError("give at or delay, not both")
    if at is None and delay is None:
        return None
    return math.ceil(at if at is not None else time.time() + (delay or 0))


def check_callback_url(url: str | None) -> None:
    if url is not None and not (URL_PATTERN.fullmatch(url) and len(url) <= 1024):
        raise ValueError("callback_url: expected an http:// or https:// URL")


def data_text(data: Any) -> str | None:
    """A job's data as the JSON text of its row."""
    return None if data is None else json.dumps(data, ensure_ascii=False)
