"""The claim decisions of jobd.worker.claims, against an in-memory job store: which
claim a poll takes (by id or by target), what stays wanted, the due timer, fetch_limit,
and what happens after a failed claim.  No MariaDB, no sockets, no processes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from jobd.config import DatabaseURL, TargetConfig
from jobd.jobs import Claim, Job, SlotWant
from jobd.store.jobstore import JobStore
from jobd.store.pool import StorageError
from jobd.worker.claims import MAX_NAMED_CLAIM, Claimer, ClaimStore
from jobd.worker.queues import TargetQueue

pytestmark = pytest.mark.timeout(10)


@dataclass
class Row:
    target: str
    slot: str = "default"
    priority: int = 0
    run_at: int | None = None
    status: str = "waiting"


@dataclass
class MemoryStore:
    """The ClaimStore of one worker over rows in memory, with the same rules as the
    table's: waiting and due rows of slots with room, best first."""

    rows: dict[int, Row] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    #: The next calls of these methods raise StorageError.
    failing: set[str] = field(default_factory=set)
    released_with: list[set[int]] = field(default_factory=list)

    def add(self, target: str, count: int = 1, **columns: Any) -> list[int]:
        first = max(self.rows, default=0) + 1
        for job_id in range(first, first + count):
            self.rows[job_id] = Row(target, **columns)
        return list(range(first, first + count))

    def _fail(self, method: str) -> None:
        self.calls.append(method)
        if method in self.failing:
            self.failing.discard(method)
            raise StorageError("the database went away")

    def _due(self, row: Row, now: float) -> bool:
        return row.status == "waiting" and (row.run_at is None or row.run_at <= now)

    async def claim_jobs(
        self,
        wanted: Mapping[str, Mapping[str, SlotWant]],
        known_slots: Mapping[str, Iterable[str]],
        limit: int,
        committed: Callable[[Claim], None] | None = None,
    ) -> Claim:
        self._fail("claim_jobs")
        claim = Claim()
        now = time.time()
        for target, slots in wanted.items():
            room = {s: w.room for s, w in slots.items()}
            start = {s: w.start for s, w in slots.items()}
            ready = sorted(
                (i for i, r in self.rows.items() if r.target == target and self._due(r, now)),
                key=lambda i: (-self.rows[i].priority, i),
            )
            for job_id in ready:
                row = self.rows[job_id]
                if room.get(row.slot, 0) > 0 and len(claim.accepted) < limit:
                    room[row.slot] -= 1
                    job = Job(job_id, target, row.slot, row.priority)
                    if start[row.slot] > 0:
                        start[row.slot] -= 1
                        job.marked_running, job.attempts = True, 1
                    row.status = "running" if job.marked_running else "accepted"
                    claim.accepted.append(job)
                else:
                    claim.full.add(target)
        claim.drained = set(wanted) - claim.full
        if committed is not None:
            committed(claim)
        due = [
            r.run_at for r in self.rows.values()
            if r.status == "waiting" and r.target in claim.drained and r.run_at and r.run_at > now
        ]  # fmt: skip
        claim.next_due = min(due, default=None)
        return claim

    async def claim_named(self, target: str, ids: Sequence[int], free: Sequence[str]) -> list[Job]:
        self._fail("claim_named")
        jobs = []
        for job_id in ids:
            row = self.rows.get(job_id)
            if row and row.target == target and row.slot in free and self._due(row, time.time()):
                row.status = "running"
                jobs.append(Job(job_id, target, row.slot, row.priority, marked_running=True))
        return jobs

    async def release_unknown(self, known: Iterable[int]) -> int:
        self._fail("release_unknown")
        self.released_with.append(set(known))
        back = [i for i, r in self.rows.items() if r.status in ("accepted", "running")]
        back = [i for i in back if i not in self.released_with[-1]]
        for job_id in back:
            self.rows[job_id].status = "waiting"
        return len(back)


class Harness:
    """A Claimer over a MemoryStore and real slot queues; what it starts is 'running'."""

    def __init__(self, slots: dict[str, int] | None = None, fetch_limit: int = 100) -> None:
        self.store = MemoryStore()
        self.targets = {
            "t": TargetQueue.from_config("t", TargetConfig(slots=slots or {"default": 2}))
        }
        self.started: list[int] = []
        self.released: list[int] = []
        self.held: set[int] = set()
        self.tasks: list[asyncio.Future[Any]] = []
        self.claimer = Claimer(
            self.store, self.targets, fetch_limit, lambda: set(self.held), self.start_ready,
            self.release, self.spawn,
        )  # fmt: skip
        self.loop: asyncio.Task[None] | None = None

    def start_ready(self) -> None:
        for target in self.targets.values():
            for slot in target.slots.values():
                self.started += [job.id for job in slot.pop_startable(target.paused)]

    async def release(self, jobs: list[Job]) -> None:
        self.released += [job.id for job in jobs]

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        self.tasks.append(asyncio.ensure_future(awaitable))

    def run(self) -> Harness:
        self.loop = asyncio.create_task(self.claimer.run())
        return self

    def finish(self, job_id: int) -> None:
        """The job ended: its place is free again."""
        slot = self.targets["t"].slots[self.store.rows[job_id].slot]
        slot.running.discard(job_id)
        self.store.rows[job_id].status = "done"
        self.claimer.job_freed("t", slot.wants_claim())

    async def close(self) -> None:
        if self.loop is not None:
            self.loop.cancel()
        await asyncio.gather(
            *self.tasks, *([self.loop] if self.loop else []), return_exceptions=True
        )


def hold_claims(store: MemoryStore) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the store's claims wait: `entered` is set when one begins, and it goes on
    once `leave` is set."""
    entered, leave = asyncio.Event(), asyncio.Event()
    claim_jobs = store.claim_jobs

    async def held_claim(*args: Any) -> Claim:
        entered.set()
        await leave.wait()
        return await claim_jobs(*args)

    store.claim_jobs = held_claim  # type: ignore[method-assign]
    return entered, leave


async def until(predicate: Callable[[], Any], what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


@pytest.fixture
async def harness() -> Any:
    made: list[Harness] = []

    def make(**options: Any) -> Harness:
        made.append(Harness(**options))
        return made[-1]

    yield make
    for h in made:
        await h.close()


def test_the_job_store_satisfies_the_claim_store_protocol():
    store = JobStore(DatabaseURL("u", "", "127.0.0.1", 3306, "db"), "jobs", "w")
    assert isinstance(store, ClaimStore)
    for name in ("claim_jobs", "claim_named", "release_unknown"):
        real = inspect.signature(getattr(JobStore, name))
        fake = inspect.signature(getattr(MemoryStore, name))
        assert list(real.parameters) == list(fake.parameters), name


async def test_a_poll_naming_its_row_to_an_idle_worker_claims_it_by_id(harness):
    h = harness().run()
    (job,) = h.store.add("t")
    h.claimer.poll(["t"], [job])
    await until(lambda: h.started == [job], "the named job started")
    assert h.store.calls == ["claim_named"]
    assert h.claimer.claimed == {"by_target": 0, "named": 1}
    assert "t" not in h.claimer.wanted


async def test_a_poll_without_ids_claims_by_target_and_the_dry_target_is_no_longer_wanted(harness):
    h = harness().run()
    ids = h.store.add("t", 2)
    h.claimer.poll(["t"])
    await until(lambda: sorted(h.started) == ids, "both jobs started")
    assert h.store.calls == ["claim_jobs"] and h.claimer.claimed["by_target"] == 2
    await until(lambda: not h.claimer.wanted, "t found dry")


@pytest.mark.parametrize(
    "why",
    ["wanted", "claim under way", "failed claim", "no free place", "too many ids", "held id"],
)
async def test_a_named_poll_claims_by_target_whenever_by_id_could_pass_over_something(harness, why):
    h = harness(slots={"default": 10})
    ids = h.store.add("t", MAX_NAMED_CLAIM + 1 if why == "too many ids" else 1)
    if why == "wanted":
        h.claimer.want(["t"])
    elif why == "failed claim":
        h.claimer.failed = True
    elif why == "no free place":
        h.targets["t"].set_concurrency("default", 0)
    elif why == "held id":
        h.held.add(ids[0])
    if why == "claim under way":
        async with h.claimer._lock:
            assert not h.claimer.takes_by_id("t", ids)
            h.claimer.poll(["t"], ids)
    else:
        assert not h.claimer.takes_by_id("t", ids)
        h.claimer.poll(["t"], ids)
    assert "t" in h.claimer.wanted  # the usual claim takes over
    assert h.tasks == []  # no claim by id was started
    h.targets["t"].set_concurrency("default", 10)
    h.held.clear()
    h.run()
    await until(lambda: "claim_jobs" in h.store.calls, "the usual claim")
    assert "claim_named" not in h.store.calls


async def test_rows_a_named_poll_did_not_take_are_left_to_the_usual_claim(harness):
    h = harness().run()
    (job,) = h.store.add("t", run_at=int(time.time()) + 3600)  # not due: not taken by id
    h.claimer.poll(["t"], [job])
    await until(lambda: h.store.calls[:2] == ["claim_named", "claim_jobs"], "both claims")
    assert h.started == [] and h.store.rows[job].status == "waiting"


async def test_after_a_failed_claim_the_next_one_gives_back_rows_it_does_not_hold(harness):
    h = harness().run()
    ids = h.store.add("t", 2)
    h.store.rows[ids[0]].status = "accepted"  # the lost claim's row, in our name
    h.store.failing.add("claim_jobs")
    h.claimer.poll(["t"])
    await until(lambda: sorted(h.started) == ids, "both jobs started after the retry")
    assert h.store.calls == ["claim_jobs", "release_unknown", "claim_jobs"]
    assert h.store.released_with == [set()]  # nothing was held then
    assert not h.claimer.failed


async def test_a_failed_claim_by_id_makes_the_next_claim_release_first(harness):
    h = harness().run()
    (job,) = h.store.add("t")
    h.store.failing.add("claim_named")
    h.claimer.poll(["t"], [job])
    await until(lambda: h.started == [job], "the job started by the usual claim")
    assert h.store.calls == ["claim_named", "release_unknown", "claim_jobs"]


async def test_a_target_polled_while_a_claim_is_in_flight_stays_wanted(harness):
    h = harness()
    h.store.add("t")
    entered, leave = hold_claims(h.store)
    h.run()
    h.claimer.poll(["t"])
    await entered.wait()
    assert h.claimer._polled_since_claim == set()
    h.claimer.poll(["t"])  # its new row may be missed by the claim in flight
    leave.set()
    await until(lambda: h.started, "the first job started")
    # The claim found t dry, yet t stayed wanted: a second claim follows without a poll.
    await until(lambda: h.store.calls.count("claim_jobs") == 2, "a second claim")
    await until(lambda: not h.claimer.wanted, "t found dry by the second claim")


async def test_a_target_found_dry_with_no_poll_meanwhile_is_no_longer_wanted(harness):
    h = harness()
    (job,) = h.store.add("t")
    claim_jobs = h.store.claim_jobs
    wanted_after: list[set[str]] = []

    async def claim_and_look(*args: Any) -> Claim:
        claim = await claim_jobs(*args)
        asyncio.get_running_loop().call_soon(lambda: wanted_after.append(set(h.claimer.wanted)))
        return claim

    h.store.claim_jobs = claim_and_look  # type: ignore[method-assign]
    h.run()
    h.claimer.poll(["t"])
    await until(lambda: wanted_after, "the claim done")
    assert wanted_after == [set()] and h.started == [job]


async def test_a_full_claim_claims_again_as_places_free(harness):
    h = harness(slots={"default": 1}).run()
    ids = h.store.add("t", 3)
    h.claimer.poll(["t"])
    await until(lambda: h.started == ids[:1], "the first job")
    assert "t" in h.claimer.wanted  # its select came back full
    h.finish(ids[0])
    await until(lambda: h.started == ids[:2], "the second job")
    h.finish(ids[1])
    await until(lambda: h.started == ids, "the third job")


async def test_the_due_timer_polls_a_dry_target_when_its_earliest_row_comes_due(harness):
    h = harness().run()
    (job,) = h.store.add("t", run_at=int(time.time()) + 1)
    h.claimer.poll(["t"])
    await until(lambda: h.store.calls == ["claim_jobs"] and not h.claimer.wanted, "t dry")
    assert h.started == []
    await until(lambda: h.started == [job], "the delayed job started", timeout=3)
    assert h.store.calls == ["claim_jobs", "claim_jobs"]


async def test_nothing_more_is_claimed_while_fetch_limit_jobs_are_queued(harness):
    h = harness(slots={"default": 1}, fetch_limit=1)
    ids = h.store.add("t", 3)
    h.targets["t"].slots["default"].push(Job(99, "t", "default"))  # one queued already
    h.store.rows[99] = Row("t", status="accepted")
    h.run()
    h.claimer.poll(["t"])
    await until(lambda: h.started == [99], "the queued job started")
    assert h.store.calls == []  # limit reached: no claim
    h.finish(99)  # the queue is empty again: job_freed wakes the loop
    await until(lambda: h.started == [99, ids[0]], "a claim once the queue emptied")


async def test_a_paused_target_is_not_claimed_until_continued(harness):
    h = harness().run()
    (job,) = h.store.add("t")
    h.targets["t"].paused = True
    h.claimer.poll(["t"], [job])
    assert not h.claimer.takes_by_id("t", [job])
    await until(lambda: "t" in h.claimer.wanted, "t wanted")
    h.claimer.wake()
    await asyncio.sleep(0.01)
    assert h.store.calls == [] and h.started == []
    h.targets["t"].paused = False
    h.claimer.want(["t"])
    await until(lambda: h.started == [job], "the job started once continued")


async def test_jobs_claimed_while_stopping_are_given_back(harness):
    h = harness()
    (job,) = h.store.add("t")
    entered, leave = hold_claims(h.store)
    h.run()
    h.claimer.poll(["t"])
    await entered.wait()
    stopped = asyncio.ensure_future(h.claimer.stop())
    await asyncio.sleep(0.01)
    assert not stopped.done()  # stop() waits for the claim in flight
    leave.set()
    await stopped
    assert h.released == [job] and h.started == []
    assert not h.claimer.takes_by_id("t", [job])
