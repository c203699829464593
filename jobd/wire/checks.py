"""The checkers of request data: each takes a raw value and the name of its field, and
returns the clean value or raises `RequestError(bad_request)` with a message that names
the field.  The error codes and `RequestError` live here too, since every checker raises
it.  Of ours, this module imports only the leaf `jobd.names`.
"""

from __future__ import annotations

import reprlib
import signal
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from jobd.names import DEFAULT_SLOT, NAME_PATTERN, WORKER_NAME_PATTERN

#: Job ids are `int unsigned` in the table.
MAX_JOB_ID = 2**32 - 1
#: Bounds on list sizes in one request, so one message cannot make a daemon do unbounded work.
MAX_IDS = 10_000
MAX_CONCURRENCY = 10_000
#: Most job events in one job-events message (a worker splits bigger batches).
MAX_EVENTS = 1000
#: Kinds of job events a worker reports (see jobd.worker.aftermath).
EVENT_KINDS = ("started", "finished", "retry")


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"  # undecodable message or data of the wrong shape
    UNKNOWN_REQUEST = "unknown_request"  # a request type this daemon does not answer
    NOT_FOUND = "not_found"  # a job, target or worker that does not exist
    CONFLICT = "conflict"  # e.g. a worker name that is already registered
    UNAVAILABLE = "unavailable"  # a dependency (database, worker) cannot be reached now
    INTERNAL = "internal_error"  # a bug: logged by the daemon


class RequestError(Exception):
    """A request that cannot be carried out; becomes an error reply."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message


def bad_request(message: str) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST, message)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 2, 40, 40, 40
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = _SHORT.maxset = 4


def short(value: Any) -> str:
    """A repr of untrusted data for an error message, bounded in length and depth (the
    plain repr of a deeply nested value raises RecursionError, and of a huge one takes
    time and memory)."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[:40])
    return _SHORT.repr(value)


Check = Callable[[Any, str], Any]


def type_name(value: Any) -> str:
    return type(value).__name__


def check_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise bad_request(f"{key}: expected a name matching {NAME_PATTERN.pattern}")
    return value


def check_worker_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not WORKER_NAME_PATTERN.fullmatch(value):
        raise bad_request(f"{key}: expected a name matching {WORKER_NAME_PATTERN.pattern}")
    return value


def _list(value: Any, key: str, limit: int = MAX_IDS) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise bad_request(f"{key}: expected a list, got {type_name(value)}")
    if len(value) > limit:
        raise bad_request(f"{key}: at most {limit} items")
    return list(value)


def check_names(value: Any, key: str) -> list[str]:
    names = [check_name(v, f"{key}[{i}]") for i, v in enumerate(_list(value, key))]
    return list(dict.fromkeys(names))  # de-duplicated, order kept


def check_job_id(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOB_ID:
        raise bad_request(f"{key}: expected a job id (integer 1..{MAX_JOB_ID})")
    return value


def check_job_ids(value: Any, key: str) -> list[int]:
    ids = [check_job_id(v, f"{key}[{i}]") for i, v in enumerate(_list(value, key))]
    if not ids:
        raise bad_request(f"{key}: expected at least one id")
    return list(dict.fromkeys(ids))


def check_concurrency(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{key}: expected an integer, got {type_name(value)}")
    if not 1 <= value <= MAX_CONCURRENCY:
        raise bad_request(f"{key}: concurrency must be between 1 and {MAX_CONCURRENCY}")
    return value


def check_slots(value: Any, key: str) -> dict[str, int]:
    """Slots of a target: a concurrency for the single slot "default", or {slot: concurrency}."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {DEFAULT_SLOT: check_concurrency(value, key)}
    if not isinstance(value, dict) or not value:
        raise bad_request(f"{key}: expected a concurrency or a non-empty map of slot: concurrency")
    if len(value) > 100:
        raise bad_request(f"{key}: at most 100 slots")
    return {
        check_name(slot, f"{key} slot"): check_concurrency(c, f"{key}.{slot}")
        for slot, c in value.items()
    }


def check_signal(value: Any, key: str) -> signal.Signals:
    """A signal by name ("SIGTERM" or "TERM") or number."""
    try:
        if isinstance(value, str):
            name = value.upper()
            return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        if isinstance(value, int) and not isinstance(value, bool):
            return signal.Signals(value)
    except (KeyError, ValueError):
        pass
    raise bad_request(f"{key}: not a signal: {short(value)}")


def check_signal_map(value: Any, key: str) -> dict[int, signal.Signals]:
    """{job id: signal}; ids may arrive as integers or decimal strings (JSON clients)."""
    if not isinstance(value, dict) or not value:
        raise bad_request(f"{key}: expected a non-empty map of job id: signal")
    if len(value) > MAX_IDS:
        raise bad_request(f"{key}: at most {MAX_IDS} items")
    out: dict[int, signal.Signals] = {}
    for raw_id, sig in value.items():
        if isinstance(raw_id, str) and raw_id.isdigit() and len(raw_id) <= 10:
            raw_id = int(raw_id)
        out[check_job_id(raw_id, f"{key} id")] = check_signal(sig, f"{key}.{raw_id}")
    return out


def check_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{key}: expected true or false, got {type_name(value)}")
    return value


def check_str(value: Any, key: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise bad_request(f"{key}: expected a string of at most {limit} characters")
    return value


def _records(value: Any, key: str, fields: Mapping[str, Check]) -> list[dict[str, Any]]:
    """A non-empty list of maps, each with exactly the given keys."""
    items = _list(value, key)
    if not items:
        raise bad_request(f"{key}: expected at least one item")
    out = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where}: expected a map, got {type_name(item)}")
        unknown = [k for k in item if k not in fields]
        if unknown:
            raise bad_request(f"{where}: unknown key {short(unknown[0])}")
        record = {}
        for name, check in fields.items():
            if name not in item:
                raise bad_request(f"{where}.{name}: required")
            record[name] = check(item[name], f"{where}.{name}")
        out.append(record)
    return out


def check_routed_jobs(value: Any, key: str) -> list[dict[str, Any]]:
    """[{id, target}] as the master receives them for run-manual."""
    return _records(value, key, {"id": check_job_id, "target": check_name})


def check_routed_signals(value: Any, key: str) -> list[dict[str, Any]]:
    """[{id, signal, target}] as the master receives them for send-signal."""
    return _records(value, key, {"id": check_job_id, "signal": check_signal, "target": check_name})


def check_worker_targets(value: Any, key: str) -> dict[str, dict[str, int]]:
    """{target: {slot: concurrency}} as a worker registers them."""
    if not isinstance(value, dict):
        raise bad_request(f"{key}: expected a map of target: slots")
    if len(value) > 1000:
        raise bad_request(f"{key}: at most 1000 targets")
    return {check_name(t, f"{key} target"): check_slots(s, f"{key}.{t}") for t, s in value.items()}


def check_descriptions(value: Any, key: str) -> dict[str, str]:
    """{target: description} as a worker registers them (from its config)."""
    if not isinstance(value, dict):
        raise bad_request(f"{key}: expected a map of target: description")
    if len(value) > 1000:
        raise bad_request(f"{key}: at most 1000 targets")
    return {
        check_name(t, f"{key} target"): check_str(d, f"{key}.{t}", limit=1000)
        for t, d in value.items()
    }


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{key}: expected a number, got {type_name(value)}")
    return value


def _optional(check: Check) -> Check:
    return lambda value, key: None if value is None else check(value, key)


def _int_in(low: int, high: int) -> Check:
    def check(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad_request(f"{key}: expected an integer {low}..{high}")
        return value

    return check


def _one_of(*choices: str) -> Check:
    def check(value: Any, key: str) -> str:
        if value not in choices:
            raise bad_request(f"{key}: expected one of {', '.join(choices)}")
        return str(value)

    return check


#: The fields of a job event: (check, required).  Workers send them in job-events and
#: the master publishes them unchanged (docs/features.md, "Job events").
EVENT_FIELDS: dict[str, tuple[Check, bool]] = {
    "event": (_one_of(*EVENT_KINDS), True),
    "id": (check_job_id, True),
    "target": (check_name, True),
    "slot": (check_name, True),
    "worker": (check_worker_name, True),
    "time": (_number, True),
    "attempts": (_int_in(0, 65535), False),
    # finished and retry: the outcome of the start (output stays in the row)
    "result": (_one_of("ok", "fail"), False),
    "code": (_optional(_int_in(0, 255)), False),
    "signal": (_optional(lambda v, k: check_str(v, k, limit=16)), False),
    "duration": (_number, False),
    # retry: when the next start is due
    "run_at": (_int_in(0, 2**32 - 1), False),
}


def check_events(value: Any, key: str) -> list[dict[str, Any]]:
    """A list of at most MAX_EVENTS job events, each with the fields of EVENT_FIELDS."""
    items = _list(value, key, limit=MAX_EVENTS)
    out = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where}: expected a map, got {type_name(item)}")
        unknown = set(item) - set(EVENT_FIELDS)
        if unknown:
            raise bad_request(f"{where}: unknown key {sorted(map(str, unknown))[0]!r:.40}")
        event = {}
        for name, (check, required) in EVENT_FIELDS.items():
            if name in item:
                event[name] = check(item[name], f"{where}.{name}")
            elif required:
                raise bad_request(f"{where}.{name}: required")
        out.append(event)
    return out
