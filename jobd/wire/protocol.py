"""The wire protocol shared by jobd, jobd-master and jobctl.

Every message is one msgpack map in the last ZeroMQ frame.

    request  {"no": <int>, "type": "<name>", "data": {...}}
    reply    {"no": <same>, "data": <result>}
    error    {"no": <same>, "error": "<message>", "code": "<machine code>"}

This module is the single definition of the request types each daemon answers
and of how their data is validated: the daemons validate incoming requests with
it and jobctl validates outgoing ones with it.  Of ours, it imports only
its checkers (`jobd.wire.checks`) and the leaf `jobd.names`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from jobd.names import DEFAULT_SLOT
from jobd.wire.checks import (
    EVENT_FIELDS,
    MAX_CONCURRENCY,
    MAX_EVENTS,
    MAX_IDS,
    MAX_JOB_ID,
    Check,
    ErrorCode,
    RequestError,
    bad_request,
    check_bool,
    check_concurrency,
    check_descriptions,
    check_events,
    check_job_ids,
    check_name,
    check_names,
    check_routed_jobs,
    check_routed_signals,
    check_signal_map,
    check_slots,
    check_str,
    check_worker_name,
    check_worker_targets,
    short,
    type_name,
)

# The limits and the event fields are part of the protocol; they live with the checkers.
__all__ = [
    "EVENT_FIELDS", "MAX_CONCURRENCY", "MAX_EVENTS", "MAX_IDS", "MAX_JOB_ID", "ErrorCode",
    "RequestError", "RequestType", "bad_request", "short",
]  # fmt: skip

PROTOCOL_VERSION = 1

#: Largest message a daemon accepts; the socket drops anything bigger (ZMQ_MAXMSGSIZE).
MAX_MESSAGE_SIZE = 1 << 20
#: The first jobd version whose workers take `ids` in a poll (older ones refuse the field,
#: so the master names rows only to workers that registered with this version or newer).
NAMED_IDS_SINCE = (0, 2)


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
            raise bad_request(f"data: expected a map, got {type_name(data)}")
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
# hint, which a worker with a free place for each takes to claim them by id (see
# docs/master.md, "Pokes that name their jobs").
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


# --- job event topics ---------------------------------------------------------
# The master publishes each event as two frames: the topic b"job/<id>/<event>" and the
# event itself.  ZeroMQ filters by topic prefix, and the trailing slash of a job's prefix
# keeps job/12/ from matching job 123.

TOPIC_PREFIX = b"job/"


def topic(event: Mapping[str, Any]) -> bytes:
    return f"job/{event['id']}/{event['event']}".encode()


def job_prefix(job_id: int) -> bytes:
    """The subscription prefix of one job's events."""
    return f"job/{job_id}/".encode()


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
        raise bad_request(f"expected a map, got {type_name(message)}")
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
