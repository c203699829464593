"""The wire protocol shared by jobd, jobd-master and jobctl.

Every message is one msgpack map in the last ZeroMQ frame.

    request  {"no": <int>, "type": "<name>", "data": {...}}
    reply    {"no": <same>, "data": <result>}
    error    {"no": <same>, "error": "<message>", "code": "<machine code>"}

This module is the single definition of the request types each daemon answers
and of how their data is validated: the daemons validate incoming requests with
it and jobctl validates outgoing ones with it.  It imports nothing of ours.
"""

from __future__ import annotations

import re
import reprlib
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

PROTOCOL_VERSION = 1

#: Largest message a daemon accepts; the socket drops anything bigger (ZMQ_MAXMSGSIZE).
MAX_MESSAGE_SIZE = 1 << 20

#: Target and slot names: they are stored in char(16) columns and appear in logs.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,16}")
#: Worker names: host names fit, and so does the `worker` column (varchar(64)).
WORKER_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")

DEFAULT_SLOT = "default"
#: Job ids are `int unsigned` in the table.
MAX_JOB_ID = 2**32 - 1
#: Bounds on list sizes in one request, so one message cannot make a daemon do unbounded work.
MAX_IDS = 10_000
MAX_CONCURRENCY = 10_000
#: Most job events in one job-events message (a worker splits bigger batches).
MAX_EVENTS = 1000
#: The first jobd version whose workers take `ids` in a poll (older ones refuse the field,
#: so the master names rows only to workers that registered with this version or newer).
NAMED_IDS_SINCE = (0, 2)
#: Kinds of job events a worker reports (see Worker._emit).
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


# --- value checkers -------------------------------------------------------------
# Each takes the raw value and the field's name, and returns the clean value or
# raises RequestError(bad_request).

Check = Callable[[Any, str], Any]


def _type_name(value: Any) -> str:
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
        raise bad_request(f"{key}: expected a list, got {_type_name(value)}")
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
        raise bad_request(f"{key}: expected an integer, got {_type_name(value)}")
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
        raise bad_request(f"{key}: expected true or false, got {_type_name(value)}")
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
            raise bad_request(f"{where}: expected a map, got {_type_name(item)}")
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
        raise bad_request(f"{key}: expected a number, got {_type_name(value)}")
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
#: the master publishes them unchanged (README, "Job events").
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
            raise bad_request(f"{where}: expected a map, got {_type_name(item)}")
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


# --- request types --------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    check: Check
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class RequestType:
    name: str
    fields: Mapping[str, Field] = field(default_factory=dict)
    doc: str = ""

    def validate(self, data: Any) -> dict[str, Any]:
        """Clean request data, or raise RequestError(bad_request)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise bad_request(f"data: expected a map, got {_type_name(data)}")
        unknown = [k for k in data if k not in self.fields]
        if unknown:
            raise bad_request(f"{self.name}: unknown field {short(unknown[0])}")
        clean: dict[str, Any] = {}
        for name, spec in self.fields.items():
            if name in data and data[name] is not None:
                clean[name] = spec.check(data[name], name)
            elif spec.required:
                raise bad_request(f"{self.name}: field {name!r} is required")
            else:
                clean[name] = spec.default
        return clean


def version_at_least(version: str, since: tuple[int, ...]) -> bool:
    """Whether a dotted version ("0.2.0", as a worker registers it) is `since` or newer;
    one that does not read as numbers counts as older."""
    try:
        return tuple(int(part) for part in version.split(".")[: len(since)]) >= since
    except ValueError:
        return False


def _table(*types: RequestType) -> dict[str, RequestType]:
    return {t.name: t for t in types}


_targets = Field(check_names)  # absent or empty: every target
# The ids of rows a client has just added to the poked targets (absent: none named): a
# hint, which a worker with a free place for each takes to claim them by id (see the
# README, "Pokes that name their jobs").
_named_ids = Field(check_job_ids, default=())

WORKER_REQUESTS: dict[str, RequestType] = _table(
    RequestType("ping", doc="Liveness check; replies with name and version."),
    RequestType(
        "poll",
        {"targets": _targets, "ids": _named_ids},
        "Claim waiting jobs of these targets (all if none); `ids`: rows just added to them.",
    ),
    RequestType("pause", {"targets": _targets}, "Stop starting new jobs of these targets."),
    RequestType("continue", {"targets": _targets}, "Resume paused targets."),
    RequestType("status", doc="Targets, slots and counters, name, version, uptime, RSS."),
    RequestType(
        "run-manual",
        {"ids": Field(check_job_ids, required=True)},
        "Run rows in status 'manual'; replies when all have finished.",
    ),
    RequestType(
        "add-target",
        {"target": Field(check_name, True), "slots": Field(check_slots, True)},
        "Serve a new target (not written back to the config file).",
    ),
    RequestType(
        "remove-target",
        {"target": Field(check_name, True)},
        "Stop serving a target; its running jobs finish, queued ones go back to waiting.",
    ),
    RequestType(
        "set-target-concurrency",
        {
            "target": Field(check_name, True),
            "concurrency": Field(check_concurrency, True),
            "slot": Field(check_name, default=DEFAULT_SLOT),
        },
        "Change a slot's concurrency (adds the slot if it is new).",
    ),
    RequestType(
        "send-signal",
        {"jobs": Field(check_signal_map, True)},
        "Send signals to the process groups of running jobs.",
    ),
)

MASTER_REQUESTS: dict[str, RequestType] = _table(
    RequestType("ping", doc="Liveness check; replies with version."),
    RequestType(
        "register-worker",
        {
            "name": Field(check_worker_name, True),
            "targets": Field(check_worker_targets, True),
            "version": Field(check_str, default=""),
            "listen": Field(check_str, default=""),
            "descriptions": Field(check_descriptions, default={}),
        },
        "Sent by a worker over its connection to the master.",
    ),
    RequestType(
        "unregister-worker",
        {"name": Field(check_worker_name, True)},
        "Sent by a stopping worker over the connection it registered on.",
    ),
    RequestType(
        "poke",
        {"targets": _targets, "ids": _named_ids},
        "Tell the workers serving these targets to poll; `ids`: rows just added to them.",
    ),
    RequestType("pause", {"targets": _targets}, "Pause these targets on their workers."),
    RequestType("continue", {"targets": _targets}, "Continue these targets on their workers."),
    RequestType(
        "status",
        {"poll_workers": Field(check_bool, default=False)},
        "Registered workers, and with poll_workers each worker's own status.",
    ),
    RequestType(
        "run-manual",
        {"jobs": Field(check_routed_jobs, True)},
        "Run manual jobs on workers serving their targets; one aggregated reply.",
    ),
    RequestType(
        "send-signal",
        {"jobs": Field(check_routed_signals, True)},
        "Signal running jobs on the workers that run them.",
    ),
    RequestType(
        "job-events",
        {"events": Field(check_events, True)},
        "Sent by a registered worker: job events for the master to publish (PUB socket).",
    ),
)


# --- framing --------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def decode(frame: bytes) -> Any:
    """Decode one msgpack frame; raises RequestError(bad_request) on anything malformed."""
    try:
        # The socket's MAXMSGSIZE already bounds the frame, and with it every length.
        return msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise bad_request(f"undecodable message: {type(exc).__name__}") from None


def request_message(no: int, type_: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"no": no, "type": type_, "data": dict(data or {})}


def reply_message(no: Any, data: Any) -> dict[str, Any]:
    return {"no": no, "data": data}


def error_message(no: Any, code: ErrorCode | str, message: str) -> dict[str, Any]:
    return {"no": no, "error": message, "code": str(code)}


def is_reply(message: Any) -> bool:
    """A reply: {"no", "data"} or {"no", "error", "code"}, nothing else.  A daemon never
    answers a reply (an unexpected one is dropped), so two daemons can never bounce error
    replies back and forth; anything else that is not a valid request gets an error."""
    return (
        isinstance(message, dict)
        and "type" not in message
        and "no" in message
        and ("data" in message or "error" in message)
        and message.keys() <= _REPLY_KEYS
    )


_REPLY_KEYS = frozenset({"no", "data", "error", "code"})


def parse_request(
    message: Any, table: Mapping[str, RequestType]
) -> tuple[int, str, dict[str, Any]]:
    """Check a decoded request against a table; returns (no, type, clean data).

    Raises RequestError; its `no` is recoverable with `request_no`.
    """
    if not isinstance(message, dict):
        raise bad_request(f"expected a map, got {_type_name(message)}")
    no = message.get("no")
    if isinstance(no, bool) or not isinstance(no, int):
        raise bad_request("no: expected an integer")
    type_ = message.get("type")
    if not isinstance(type_, str):
        raise bad_request("type: expected a string")
    request_type = table.get(type_)
    if request_type is None:
        raise RequestError(ErrorCode.UNKNOWN_REQUEST, f"unknown request type {short(type_)}")
    return no, type_, request_type.validate(message.get("data"))


def request_no(message: Any) -> int | None:
    """The request number of a (possibly malformed) message, for the error reply."""
    if isinstance(message, dict):
        no = message.get("no")
        if isinstance(no, int) and not isinstance(no, bool) and -(2**63) <= no < 2**64:
            return no
    return None
