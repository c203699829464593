"""A seeded generator of hostile frames for the daemons' sockets.

Every frame comes from `random.Random(seed)`, so a failing run is reproduced exactly by
its seed and frame number.  The mix: random bytes, truncated and bit-flipped msgpack,
random msgpack values (edge-case integers, SQL metacharacters, overlong and non-string
names, ext types), huge arrays, maps and strings up to and beyond the 1 MiB message
limit, deep nesting, unknown request types, valid requests of every type with one field
mutated, and multi-frame messages.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from jobd.wire.protocol import MAX_MESSAGE_SIZE, RequestError, RequestType

#: Integers a careless decoder or validator trips over.
EDGE_INTS = [
    0, 1, -1, 2, 16, 17, 127, 128, 255, 256, -32, -33, 2**15, 2**16, 2**31 - 1, 2**31,
    2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63),
]  # fmt: skip
SQL = [
    "'; DROP TABLE jobs; --", "t' OR '1'='1", '" OR 1=1 --', "`jobs`", "t; DELETE FROM jobs",
    "%s", "%(target)s", "\\", "\\'", "t\x00", "\x00", "--", "/*", "*/", "t%", "_", "%",
    "' UNION SELECT * FROM mysql.user --", "sleep(10)", "t' AND SLEEP(5) --",
]  # fmt: skip
ODD = ["", " ", "ñ", "🙂", "a" * 16, "a" * 17, "a" * 64, "a" * 65, "a" * 4096, "\udc80"[:0]]
TYPES = [
    "ping", "poll", "pause", "continue", "status", "run-manual", "add-target", "remove-target",
    "set-target-concurrency", "send-signal", "register-worker", "unregister-worker", "poke",
    "job-events", "PING", "ping ", "", "\x00", "shutdown", "exec", "a" * 10_000,
]  # fmt: skip


#: Kinds of big values `Generator.big` makes.
HUGE_KINDS = 5


@dataclass(frozen=True)
class Frame:
    """One message to send: its frames (the payload last) and what the generator made."""

    parts: list[bytes]
    kind: str

    @property
    def payload(self) -> bytes:
        return self.parts[-1]

    @property
    def size(self) -> int:
        return max(len(p) for p in self.parts)


class Generator:
    def __init__(self, seed: int, requests: Mapping[str, RequestType]) -> None:
        self.rng = random.Random(seed)
        self.valid = valid_requests(requests)

    # --- values -----------------------------------------------------------------

    def integer(self) -> int:
        r = self.rng
        if r.random() < 0.6:
            return r.choice(EDGE_INTS)
        return r.randint(-(2**63), 2**64 - 1)

    def string(self) -> str:
        r = self.rng
        pick = r.random()
        if pick < 0.3:
            return r.choice(SQL)
        if pick < 0.5:
            return r.choice(ODD)
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_.-'\"`;%\\ \t\n\x00é"
        return "".join(r.choice(alphabet) for _ in range(r.randint(0, 40)))

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kinds = ["int", "str", "bytes", "float", "bool", "nil", "ext"]
        if depth < 4:
            kinds += ["list", "map"] * 2
        kind = r.choice(kinds)
        if kind == "int":
            return self.integer()
        if kind == "str":
            return self.string()
        if kind == "bytes":
            return r.randbytes(r.randint(0, 64))
        if kind == "float":
            return r.choice([0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 1e308])
        if kind == "bool":
            return r.random() < 0.5
        if kind == "nil":
            return None
        if kind == "ext":
            return msgpack.ExtType(r.randint(0, 127), r.randbytes(r.randint(0, 16)))
        if kind == "list":
            return [self.value(depth + 1) for _ in range(r.randint(0, 6))]
        keys = [self.string, self.integer, lambda: None, lambda: r.random() < 0.5]
        return {r.choice(keys)(): self.value(depth + 1) for _ in range(r.randint(0, 6))}

    # --- messages -----------------------------------------------------------------

    def mutated_request(self) -> dict[str, Any]:
        """A valid request of some type with one thing changed (or none: valid ones are
        in the mix too)."""
        r = self.rng
        message = {"no": r.randint(1, 2**40), **_deep_copy(r.choice(self.valid))}
        data = message.setdefault("data", {})
        pick = r.randrange(10)
        if pick == 0:
            pass  # unchanged: a valid request
        elif pick == 1 and data:
            data[r.choice(list(data))] = self.value()
        elif pick == 2 and data:
            del data[r.choice(list(data))]
        elif pick == 3:
            data[self.string()] = self.value()
        elif pick == 4:
            message["no"] = r.choice([self.value(), self.integer(), None, "1", 1.0, True])
        elif pick == 5:
            message["type"] = r.choice([*TYPES, self.string(), self.integer(), None])
        elif pick == 6:
            message["data"] = self.value()
        elif pick == 7:
            # Hostile names where names go: SQL, overlong, non-strings.
            name = r.choice([r.choice(SQL), r.choice(ODD), self.integer(), None, [], {}, 1.5])
            for key in ("target", "targets", "name", "slot", "slots", "jobs", "ids"):
                if key in data:
                    data[key] = [name] if isinstance(data[key], list) else name
        elif pick == 8:
            for key in ("ids", "jobs"):
                if key in data:  # ids: negative, zero, huge, floats, strings
                    bad = r.choice([0, -1, -(2**63), 2**32, 2**64 - 1, 1.0, "1", None])
                    data[key] = [bad] if isinstance(data[key], list) else {bad: "TERM"}
        else:
            del message[r.choice(["no", "type", "data"])]
        return message

    def huge(self, limit: int) -> bytes:
        """A big array, map or string, under or over `limit` bytes."""
        r = self.rng
        size = r.choice([limit // 2, limit - 64, limit + 1024, limit * 2])
        return self.big(r.randrange(HUGE_KINDS), size)

    def big(self, kind: int, size: int) -> bytes:
        """A request of about `size` bytes whose data is one of HUGE_KINDS big values."""
        if kind == 0:  # an array of small ints as the targets
            body: Any = {"targets": [self.rng.randint(0, 127)] * size}
        elif kind == 1:  # a map with many keys
            body = {f"k{i}": i for i in range(size // 12)}
        elif kind == 2:  # one long string as a target name
            body = {"targets": ["x" * size]}
        elif kind == 3:  # a signal map with many ids
            body = {"jobs": {i: "TERM" for i in range(1, size // 8)}}
        else:  # one byte each, some 60 bytes each once decoded: [[], {}, [], ...]
            body = {"targets": [[], {}] * (size // 2)}
        message = {"no": self.rng.randint(1, 2**30), "type": "poll", "data": body}
        return msgpack.packb(message, use_bin_type=True)

    def worst_cases(self, limit: int) -> Iterator[Frame]:
        """The biggest message of each kind that the socket lets through, twice in a row."""
        for kind in range(HUGE_KINDS):
            frame = Frame([self.big(kind, limit - 256)], "huge")
            yield from (frame, frame)

    def deep(self) -> bytes:
        r = self.rng
        depth = r.choice([100, 1000, 1023, 1024, 5000, 200_000])
        value = b"\x91" * depth + b"\xc0"  # [[[...nil...]]]
        if r.random() < 0.5:
            return value
        # Inside a request, where the value is checked (and shown in the error):
        # {"no": 7, "type": "send-signal", "data": {"jobs": {1: [[[...]]]}}}
        pack = msgpack.packb
        head = b"\x83" + pack("no") + pack(7) + pack("type") + pack("send-signal")
        return head + pack("data") + b"\x81" + pack("jobs") + b"\x81" + pack(1) + value

    def frame(self, huge: bool = True) -> Frame:
        r = self.rng
        pick = r.random()
        if pick < 0.12:
            return Frame([r.randbytes(r.choice([0, 1, 2, 5, 30, 200, 5000]))], "random bytes")
        if pick < 0.2:
            packed = msgpack.packb(self.mutated_request(), use_bin_type=True)
            return Frame([packed[: r.randrange(max(len(packed), 1))]], "truncated")
        if pick < 0.3:
            packed = bytearray(msgpack.packb(self.mutated_request(), use_bin_type=True))
            for _ in range(r.randint(1, 4)):
                packed[r.randrange(len(packed))] = r.randrange(256)
            return Frame([bytes(packed)], "bit flips")
        if pick < 0.42:
            return Frame([msgpack.packb(self.value(), use_bin_type=True)], "random value")
        if pick < 0.47:
            message = {"no": r.randint(1, 2**40), "type": r.choice([*TYPES, self.string()])}
            if r.random() < 0.5:
                message["data"] = self.value()
            return Frame([msgpack.packb(message, use_bin_type=True)], "request types")
        if pick < 0.48 and huge:
            return Frame([self.huge(MAX_MESSAGE_SIZE)], "huge")
        if pick < 0.51:
            return Frame([self.deep()], "deep nesting")
        if pick < 0.56:
            extra = [r.randbytes(r.randint(0, 64)) for _ in range(r.randint(1, 4))]
            payload = msgpack.packb(self.mutated_request(), use_bin_type=True)
            return Frame([*extra, payload], "multi-frame")
        packed = msgpack.packb(self.mutated_request(), use_bin_type=True)
        return Frame([packed], "mutated request")

    def frames(self, count: int, huge: bool = True) -> Iterator[Frame]:
        """`count` frames; without `huge`, none of the big ones (the rest of the mix stays)."""
        for _ in range(count):
            yield self.frame(huge)


#: Candidate data of each request type; the first the table accepts is used.
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "poll": [{"targets": ["t"]}],
    "pause": [{"targets": ["t"]}],
    "continue": [{"targets": ["t"]}],
    "status": [{}],
    "run-manual": [{"ids": [1, 2]}, {"jobs": [{"id": 1, "target": "t"}]}],
    "add-target": [{"target": "fz", "slots": {"a": 1}}],
    "remove-target": [{"target": "fz"}],
    "set-target-concurrency": [{"target": "t", "concurrency": 2, "slot": "default"}],
    "send-signal": [{"jobs": {1: "TERM"}}, {"jobs": [{"id": 1, "signal": "TERM", "target": "t"}]}],
    "register-worker": [{"name": "fz", "targets": {"fz": {"default": 1}}, "listen": ""}],
    "unregister-worker": [{"name": "fz"}],
    "poke": [{"targets": ["t"]}],
    "job-events": [{"events": []}],
}


def valid_requests(table: Mapping[str, RequestType]) -> list[dict[str, Any]]:
    """One valid request (without "no") of each type in the table."""
    out = []
    for name, request_type in table.items():
        for data in EXAMPLES.get(name, [{}]):
            try:
                request_type.validate(_deep_copy(data))
            except RequestError:
                continue
            out.append({"type": name, "data": data})
            break
        else:
            raise AssertionError(f"no valid example of {name}: add one to EXAMPLES")
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
