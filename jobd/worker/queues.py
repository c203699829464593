"""In-memory queues of one worker: targets, their slots, and the jobs claimed for them.

Pure bookkeeping: no I/O, so the scheduling rules (who may start, how much to claim)
can be read and tested on their own.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

from jobd.config import TargetConfig
from jobd.jobs import Job

#: "Soon": a slot may claim ahead the jobs it expects to start within this many seconds,
#: judged by how long its recent jobs took.  Short jobs then never wait for a claim's
#: round trip; long jobs are never claimed ahead, so no worker hoards them.
PREFETCH_HORIZON = 0.1
#: ... and at most this many more rounds of the slot's concurrency.  Very short jobs are
#: then claimed in batches of several dozen: much of what a claim costs the server is
#: per claim, not per row (its locking read passes the entries of the rows claimed
#: before, until purge removes them), so MariaDB's CPU and the statements a job fall
#: as claims grow (bench/README.md, "Claiming further ahead").
ROUNDS_AHEAD = 8
#: "About to start": of the jobs claimed ahead, those expected to start within this many
#: seconds are claimed straight to 'running' too.  For very short jobs that saves a
#: mark_running statement (and its commit) per job; the price is that a worker killed
#: within that moment counts them as started (docs/guarantees.md).  It spans
#: what ROUNDS_AHEAD holds of jobs of a few milliseconds, else the rows claimed ahead
#: would each need a mark_running of their own after all.
MARK_HORIZON = 0.03
#: Recent durations below this count as this much: a clock's reading of a job that short
#: says little about the next one.
_MIN_DURATION = 1e-3


@dataclass
class SlotQueue:
    """One slot of a target: jobs waiting to start in order, and the ids running."""

    concurrency: int
    queued: list[tuple[tuple[int, int, int], Job]] = field(default_factory=list)
    running: set[int] = field(default_factory=set)
    #: Moving average of recent job durations (seconds); None until one has finished.
    mean_duration: float | None = None

    def push(self, job: Job) -> None:
        heapq.heappush(self.queued, (job.order_key(), job))

    def record_duration(self, seconds: float) -> None:
        if self.mean_duration is None:
            self.mean_duration = seconds
        else:
            self.mean_duration = 0.8 * self.mean_duration + 0.2 * seconds

    def ahead(self) -> int:
        """Jobs this slot may hold queued beyond its free places: as many as finish
        within PREFETCH_HORIZON at the recent pace, at most ROUNDS_AHEAD more rounds (so
        very short jobs are claimed in batches, which saves statements per job)."""
        return min(ROUNDS_AHEAD * self.concurrency, self._pace(PREFETCH_HORIZON))

    def _pace(self, seconds: float) -> int:
        """Jobs this slot starts in `seconds` at the recent pace (0 while none finished)."""
        if self.mean_duration is None:
            return 0
        return int(self.concurrency * seconds / max(self.mean_duration, _MIN_DURATION))

    def starts_soon(self) -> int:
        """Jobs a claim takes straight to 'running': one per free place, and those claimed
        ahead that start within MARK_HORIZON at the recent pace (after the queued ones)."""
        soon = max(0, min(self.ahead(), self._pace(MARK_HORIZON)) - len(self.queued))
        return min(self.room(), self.free() + soon)

    def free(self) -> int:
        """Places where a job could start right now."""
        return max(0, self.concurrency - len(self.running) - len(self.queued))

    def room(self) -> int:
        """How many more jobs this slot may take on (queued ones count as taken)."""
        return max(0, self.concurrency + self.ahead() - len(self.running) - len(self.queued))

    def wants_claim(self) -> bool:
        """A claim is due when a place is idle, or when the jobs claimed ahead are half
        gone: claiming one job at a time as each finishes would cost a claim per job."""
        return self.free() > 0 or self.room() > self.ahead() // 2

    def pop_startable(self, paused: bool) -> Iterator[Job]:
        """Jobs that may start now; when paused, only manual runs (an operator asked)."""
        while self.queued and len(self.running) < self.concurrency:
            job = self.queued[0][1]
            # A job the claim already marked 'running' starts even if the target was
            # paused meanwhile: its row says it runs, and so it shall.
            if paused and not (job.manual or job.marked_running):
                return
            heapq.heappop(self.queued)
            self.running.add(job.id)
            yield job

    def drain(self) -> list[Job]:
        jobs = [job for _, job in self.queued]
        self.queued.clear()
        return jobs


@dataclass
class TargetQueue:
    """A target this worker serves."""

    name: str
    slots: dict[str, SlotQueue]
    options: TargetConfig
    paused: bool = False

    @classmethod
    def from_config(cls, name: str, config: TargetConfig) -> TargetQueue:
        return cls(name, {slot: SlotQueue(c) for slot, c in config.slots.items()}, config)

    def reconfigure(self, config: TargetConfig) -> list[Job]:
        """Take new slots and options; returns the queued jobs of slots that are gone.
        Running jobs of a removed slot finish (their ids just stop counting here)."""
        gone = [
            job
            for name in set(self.slots) - set(config.slots)
            for job in self.slots.pop(name).drain()
        ]
        for name, concurrency in config.slots.items():
            self.set_concurrency(name, concurrency)
        self.options = config
        return gone

    def drain(self) -> list[Job]:
        return [job for slot in self.slots.values() for job in slot.drain()]

    def room(self) -> dict[str, int]:
        return {name: slot.room() for name, slot in self.slots.items()}

    def slots_free_for(self, count: int) -> list[str]:
        """The slots where `count` jobs could all start right now (none while paused)."""
        if self.paused:
            return []
        return [name for name, slot in self.slots.items() if slot.free() >= count]

    def queued_count(self) -> int:
        return sum(len(slot.queued) for slot in self.slots.values())

    def running_count(self) -> int:
        return sum(len(slot.running) for slot in self.slots.values())

    def concurrency(self) -> dict[str, int]:
        return {name: slot.concurrency for name, slot in self.slots.items()}

    def set_concurrency(self, slot: str, concurrency: int) -> None:
        if slot in self.slots:
            self.slots[slot].concurrency = concurrency
        else:
            self.slots[slot] = SlotQueue(concurrency)

    def status(self) -> dict[str, object]:
        return {
            "paused": self.paused,
            "slots": {
                name: {
                    "concurrency": slot.concurrency,
                    "queued": len(slot.queued),
                    "running": len(slot.running),
                }
                for name, slot in self.slots.items()
            },
        }
