"""Plain values that pass between the store, the launcher, the worker and the client."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

_BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")


@dataclass(slots=True)
class Job:
    """A claimed row, waiting in its slot or running."""

    id: int
    target: str
    slot: str
    priority: int = 0
    _: KW_ONLY
    manual: bool = False
    attempts: int = 0  # runs started, this one included once it has started
    #: Claimed straight to 'running' (it starts at once): no separate mark_running.
    marked_running: bool = False
    data: str | None = None  # JSON given to the launcher on stdin
    callback_url: str | None = None
    schedule_id: int | None = None

    def order_key(self) -> tuple[int, int, int]:
        # Manual runs first (an operator is waiting), then jobs whose rows say 'running'
        # already (claimed for a free place), then priority, then id.
        rank = 0 if self.manual else 1 if self.marked_running else 2
        return (rank, -self.priority, self.id)


@dataclass(frozen=True, slots=True)
class Retry:
    """A failed attempt that goes back to waiting."""

    run_at: int  # UNIX time of the next attempt
    summary: str  # one line for the row's attempt_log


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of a job ended: as the worker writes it to the row, as a reply or an
    event carries it (`as_reply`), and as a client reads it back (`from_row`)."""

    result: str  # 'ok' exactly when code == 0, else 'fail'
    code: int | None  # the exit code; None when killed by a signal or never started
    signal: str | None  # signal name such as 'SIGKILL' when the process was killed
    stdout: str
    stderr: str
    #: Seconds: measured by the worker; from a row, whole seconds (None if unknown).
    duration: float | None
    note: str | None = None  # why jobd stopped the job (timeout, shutdown), if it did

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Outcome:
        """The outcome of a finished row: its duration from `duration_ms`, or from the
        whole-second columns for a row written before there was one."""
        return cls(
            result=row["result"], code=row["return_code"], signal=row["sig"],
            stdout=row["stdout"] or "", stderr=row["stderr"] or "", duration=ran(row),
        )  # fmt: skip

    @property
    def duration_ms(self) -> int | None:
        """The duration as the row keeps it, in whole milliseconds."""
        return None if self.duration is None else round(self.duration * 1000)

    def storable(self) -> Outcome:
        """The same with characters beyond the Basic Multilingual Plane replaced, for a
        table whose text columns are 3-byte utf8 (the seed's)."""
        return dataclasses.replace(
            self, stdout=_BEYOND_BMP.sub("\ufffd", self.stdout),
            stderr=_BEYOND_BMP.sub("\ufffd", self.stderr),
        )  # fmt: skip

    def without_output(self) -> Outcome:
        note = "[jobd: the output could not be stored]\n"
        return dataclasses.replace(self, stdout=note, stderr=note)

    def describe(self) -> str:
        if self.signal:
            how = f"killed by {self.signal}"
        elif self.code is None:
            how = "could not start"
        else:
            how = f"exit code {self.code}"
        return f"{self.note} ({how})" if self.note else how

    def as_reply(self, output_limit: int | None = None) -> dict[str, Any]:
        """The outcome as a reply carries it; with `output_limit`, each stream is cut to
        that many characters (the row keeps all of it)."""
        duration = self.duration
        if isinstance(duration, float):
            duration = round(duration, 6)
        return {
            "result": self.result,
            "code": self.code,
            "signal": self.signal,
            "stdout": _cut(self.stdout, output_limit),
            "stderr": _cut(self.stderr, output_limit),
            "duration": duration,
        }


def ran(row: Mapping[str, Any]) -> float | None:
    """How long a row's last start ran, in seconds: `duration_ms`, else (a row from
    before it) the whole seconds between time_started and time_finished."""
    if row.get("duration_ms") is not None:
        return int(row["duration_ms"]) / 1000
    started, finished = row.get("time_started") or 0, row.get("time_finished") or 0
    return float(finished - started) if started and finished >= started else None


def waited(row: Mapping[str, Any]) -> int | None:
    """How long a row waited to be claimed, in whole seconds (time_claimed minus
    time_created), once it was."""
    claimed, created = row.get("time_claimed") or 0, row.get("time_created") or 0
    return claimed - created if claimed and claimed >= created else None


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n[jobd: {len(text) - limit} more characters in the row]\n"


@dataclass(frozen=True)
class SlotWant:
    """What a claim may take for one slot."""

    start: int  # rows that start at once (claimed straight to 'running')
    room: int  # rows in all: those, and those that wait in the slot, soon to start


@dataclass
class Claim:
    """What one claim transaction took."""

    accepted: list[Job] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    #: Targets whose select came back full: more rows may be waiting.
    full: set[str] = field(default_factory=set)
    #: Targets with a slot that had no room and was not asked for: rows may wait for it.
    partial: set[str] = field(default_factory=set)
    #: Targets found dry: neither full nor partial.
    drained: set[str] = field(default_factory=set)
    #: The earliest future not-before time of a waiting row of the drained targets.
    next_due: int | None = None
