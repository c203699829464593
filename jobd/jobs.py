"""Plain values that pass between storage, launcher and worker."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import KW_ONLY, dataclass
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
    """How one run of a job ended, as written back to its row."""

    result: str  # 'ok' exactly when return_code == 0, else 'fail'
    return_code: int | None
    sig: str | None  # signal name such as 'SIGKILL' when the process was killed
    stdout: str
    stderr: str
    duration: float  # seconds, measured by the worker
    note: str | None = None  # why jobd stopped the job (timeout, shutdown), if it did

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
        if self.sig:
            how = f"killed by {self.sig}"
        elif self.return_code is None:
            how = "could not start"
        else:
            how = f"exit code {self.return_code}"
        return f"{self.note} ({how})" if self.note else how

    def as_reply(self, output_limit: int | None = None) -> dict[str, Any]:
        """The outcome as a reply carries it; with `output_limit`, each stream is cut to
        that many characters (the row keeps all of it)."""
        return {
            "result": self.result,
            "code": self.return_code,
            "signal": self.sig,
            "stdout": _cut(self.stdout, output_limit),
            "stderr": _cut(self.stderr, output_limit),
            "duration": round(self.duration, 6),
        }


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n[jobd: {len(text) - limit} more characters in the row]\n"
