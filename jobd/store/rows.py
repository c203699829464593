"""The rows the job store reads, as plain values, and the pure steps of its state
changes: how a claim's selected rows are sorted into the claim, and how a batch of
outcomes is split so no UPDATE grows too big.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobd.jobs import Claim, Job, Outcome, SlotWant

#: Most output bytes in one batched UPDATE, well under max_allowed_packet (16 MiB).
MAX_BATCH_BYTES = 4 << 20


@dataclass(frozen=True)
class ManualRow:
    id: int
    target: str
    slot: str
    priority: int
    status: str
    worker: str | None
    attempts: int
    data: str | None
    callback_url: str | None
    schedule_id: int | None

    def job(self) -> Job:
        return Job(
            self.id, self.target, self.slot, self.priority, manual=True, attempts=self.attempts,
            data=self.data, callback_url=self.callback_url, schedule_id=self.schedule_id,
        )  # fmt: skip


def batches(done: list[tuple[int, Outcome]]) -> list[list[tuple[int, Outcome]]]:
    """Split finished jobs so no single UPDATE carries more than MAX_BATCH_BYTES of output."""
    batches: list[list[tuple[int, Outcome]]] = []
    size = 0
    for item in done:
        weight = len(item[1].stdout) + len(item[1].stderr)
        if not batches or (batches[-1] and size + weight > MAX_BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += weight
    return batches


def claimed_job(target: str, row: Sequence[Any]) -> Job:
    """The job of a row read with Queries.claimable_columns."""
    job_id, slot, priority, attempts, data, callback_url, schedule_id = row
    return Job(
        job_id, target, slot, priority, attempts=attempts, data=data,
        callback_url=callback_url, schedule_id=schedule_id,
    )  # fmt: skip


def take(
    claim: Claim,
    target: str,
    slots: Mapping[str, SlotWant],
    rows: Iterable[Sequence[Any]],
    want: int,
    full: bool,
) -> None:
    """Sort one target's selected rows into the claim: the first `start` rows of a slot
    start at once, more up to its `room` wait in it, rows of unknown slots are ignored,
    and the rest stays waiting (then the target may have more: it is `full`)."""
    room = {slot: w.room for slot, w in slots.items()}
    start = {slot: w.start for slot, w in slots.items()}
    if full:
        claim.full.add(target)
    for row in rows:
        slot = row[1]
        if slot not in room:
            claim.ignored.append(row[0])
        elif room[slot] > 0 and want > 0:
            room[slot] -= 1
            want -= 1
            job = claimed_job(target, row)
            if start[slot] > 0:
                start[slot] -= 1
                job.marked_running = True
                job.attempts += 1
            claim.accepted.append(job)
        else:
            claim.full.add(target)  # rows left behind for a slot with no room
