"""What the worker claims, and when: the one place a claim is decided.

A poll marks its targets *wanted*; the claim loop then claims, in one transaction, what
the slots of the wanted targets can start soon (`JobStore.claim_jobs`), and a target
stays wanted while rows may still wait for it (its claim came back full, or a slot had
no room).  A poll that names the rows a client has just added claims them by id instead
(`JobStore.claim_named`: one round trip, no locking read), but only when that cannot
pass over anything: see `Claimer.takes_by_id`.  After a target runs dry, one timer polls
it again when its earliest delayed row comes due.

No sockets and no processes here: the claimer talks to the database through the
`ClaimStore` protocol (which `JobStore` satisfies, and the unit tests fake in memory),
and hands what it claimed to the worker's slot queues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from jobd.jobs import Claim, Job, SlotWant
from jobd.runtime.backoff import Backoff
from jobd.store.pool import StorageError
from jobd.worker.queues import TargetQueue

log = logging.getLogger("jobd.worker")

#: Most rows a poll may name for a claim by id; a poll naming more claims as usual (rows
#: in such numbers are a batch, which claim_jobs takes best first in one go).
MAX_NAMED_CLAIM = 8


@runtime_checkable
class ClaimStore(Protocol):
    """The part of the job store a claimer uses (jobd.store.jobstore.JobStore)."""

    async def claim_jobs(
        self,
        wanted: Mapping[str, Mapping[str, SlotWant]],
        known_slots: Mapping[str, Iterable[str]],
        limit: int,
        committed: Callable[[Claim], None] | None = None,
    ) -> Claim: ...

    async def claim_named(
        self, target: str, ids: Sequence[int], free: Sequence[str]
    ) -> list[Job]: ...

    async def release_unknown(self, known: Iterable[int]) -> int: ...


class Claimer:
    """Claims rows into the slot queues of `targets` (the worker's own dict).

    `held()`: the ids the worker holds outside the queues (running, or finished with
    the outcome not yet written).  `start_ready()`: start what the queues may start now.
    `release(jobs)`: give claimed jobs back to the table.  `spawn(awaitable)`: run work
    that shutdown waits for."""

    def __init__(
        self,
        store: ClaimStore,
        targets: dict[str, TargetQueue],
        fetch_limit: int,
        held: Callable[[], set[int]],
        start_ready: Callable[[], None],
        release: Callable[[list[Job]], Awaitable[None]],
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self.store = store
        self.targets = targets
        #: Most jobs claimed but not started (the config's fetch_limit).
        self.fetch_limit = fetch_limit
        self._held = held
        self._start_ready = start_ready
        self._release = release
        self._spawn = spawn
        #: Targets with a poll not yet carried out in full (no room yet, or a claim came
        #: back full).
        self.wanted: set[str] = set()
        #: Targets polled while a claim was in flight: that claim may have missed their
        #: new rows, so they stay wanted whatever it returned.
        self._polled_since_claim: set[str] = set()
        #: The last claim failed: its commit may have gone through with its answer lost.
        self.failed = False
        #: Wanted targets wait for fetch_limit (too many jobs queued).
        self._fetch_limited = False
        self.stopping = False
        #: Closed by the fence (jobd.worker.heartbeat): no heartbeat for half the lease.
        self.fenced = False
        #: Jobs claimed so far: by target (claim_jobs) and by id (claim_named).
        self.claimed = {"by_target": 0, "named": 0}
        #: Claims that failed (the database away, or refusing).
        self.failures = 0
        #: Told of each claim that went through: its kind, the jobs it took, its seconds.
        self.on_claim: Callable[[str, int, float], None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one claim at a time; stop() waits for it
        self._due_timer: asyncio.TimerHandle | None = None
        self._due_at: float | None = None

    # --- polls --------------------------------------------------------------------

    def poll(self, targets: Iterable[str], ids: Sequence[int] = ()) -> None:
        """Claim waiting rows of `targets`; `ids`: rows just added to them (a hint)."""
        targets = list(targets)
        if len(targets) == 1 and ids and self.takes_by_id(targets[0], ids):
            self._spawn(self._claim_named(targets[0], list(ids)))
        else:
            self.want(targets)

    def want(self, targets: Iterable[str]) -> None:
        """Mark targets wanted: the claim loop claims for them as room allows."""
        targets = set(targets)
        self.wanted |= targets
        self._polled_since_claim |= targets
        self._wake.set()

    def poll_at(self, target: str, when: float) -> None:
        """Poll a target again at UNIX time `when` (a retry's not-before time)."""
        delay = max(0.0, when - time.time())
        asyncio.get_running_loop().call_later(delay, self.want, [target])

    def job_freed(self, target: str, wants_claim: bool) -> None:
        """A job of `target` left its slot (`wants_claim`: the slot would claim now).
        The claim loop wakes only when this place may lead to a claim: waking it after
        every job of a long backlog would cost a turn of it per job for nothing."""
        if self._fetch_limited or (wants_claim and target in self.wanted):
            self._wake.set()

    def wake(self) -> None:
        """Look at the queues again (jobs were queued by someone else: a manual run)."""
        self._wake.set()

    def forget(self, target: str) -> None:
        self.wanted.discard(target)

    # --- by id or by target -------------------------------------------------------

    def takes_by_id(self, target: str, ids: Sequence[int]) -> bool:
        """Whether a poll naming `ids` of `target` claims them by id.  Only when that
        cannot pass over anything: no claim is under way (the target may be wanted once
        it is done), the worker knows of no row that may wait for the target (it is not
        wanted: there priorities decide), the last claim did not fail, the worker holds
        none of the ids, at most MAX_NAMED_CLAIM are named, and a slot has a free place
        for each of them."""
        return not self._lock.locked() and bool(self._named_slots(target, ids))

    def _named_slots(self, target: str, ids: Sequence[int]) -> list[str]:
        queue = self.targets.get(target)
        if (
            queue is None
            or len(ids) > MAX_NAMED_CLAIM
            or self.stopping
            or self.fenced
            or target in self.wanted
            or self.failed
            or not self.held_ids().isdisjoint(ids)
        ):
            return []
        return queue.slots_free_for(len(ids))

    async def _claim_named(self, target: str, ids: list[int]) -> None:
        jobs: list[Job] = []
        orphans: list[Job] = []
        async with self._lock:
            free = self._named_slots(target, ids)  # again: a claim may have come first
            if free:
                began = time.monotonic()
                try:
                    jobs = await self.store.claim_named(target, ids, free)
                    self.claimed["named"] += len(jobs)
                    self._claimed("named", len(jobs), began)
                except StorageError as exc:
                    self.failed = True  # the next claim gives back what this one took
                    self.failures += 1
                    log.warning("claim of jobs %s failed: %s", ids, exc)
                orphans = self.queue(jobs)
                self._start_ready()
        if len(jobs) < len(ids):
            self.want([target])  # not all taken here: the usual claim looks
        await self._release(orphans)

    # --- the claim loop -----------------------------------------------------------

    async def run(self) -> None:
        """Claim whenever woken and there is something to claim for; a claim that failed
        is tried again with backoff."""
        backoff = Backoff()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._start_ready()
            self.wanted &= set(self.targets)
            wants = self.wants()
            queued = sum(t.queued_count() for t in self.targets.values())
            limit = self.fetch_limit - queued
            self._fetch_limited = bool(wants) and limit <= 0
            if self.stopping or self.fenced or not wants or limit <= 0:
                continue
            async with self._lock:
                claimed = await self._claim(wants, limit)
            if not claimed:
                await asyncio.sleep(backoff.next())
                self._wake.set()
                continue
            backoff.reset()

    def wants(self) -> dict[str, dict[str, SlotWant]]:
        """What a claim may take now: for each wanted target that is not paused and has a
        slot that wants a claim, what each of its slots may take."""
        wants = {}
        for name in self.wanted:
            target = self.targets.get(name)
            if target is None or target.paused:
                continue
            if any(q.wants_claim() for q in target.slots.values()):
                wants[name] = {
                    s: SlotWant(q.starts_soon(), q.room()) for s, q in target.slots.items()
                }
        return wants

    async def _claim(self, wants: dict[str, dict[str, SlotWant]], limit: int) -> bool:
        """One claim: its jobs queued (or started); False when the database failed."""
        try:
            if self.failed:
                # A claim whose commit went through but whose answer was lost left rows in
                # our name that we do not hold: give them back.
                released = await self.store.release_unknown(self.held_ids())
                if released:
                    log.warning("released %d rows of a claim whose answer was lost", released)
                self.failed = False
            self._polled_since_claim.clear()
            orphans: list[Job] = []

            def committed(claim: Claim) -> None:
                # The jobs start once the claim is committed, before the rest of its
                # answer (the next due time) is read.
                orphans.extend(self.queue(claim.accepted))
                self._start_ready()

            known = {t: self.targets[t].slots.keys() for t in wants}
            began = time.monotonic()
            claim = await self.store.claim_jobs(wants, known, limit, committed)
            self.claimed["by_target"] += len(claim.accepted)
            self._claimed("by_target", len(claim.accepted), began)
        except StorageError as exc:
            self.failed = True
            self.failures += 1
            log.warning("claim failed, retrying: %s", exc)
            return False
        # A target stays wanted while rows may wait: its select came back full, or a slot
        # of it had no room and was not asked (its rows are claimed when it has room).
        self.wanted -= claim.drained - self._polled_since_claim
        if claim.full:
            self._wake.set()  # claim again once there is room
        if claim.ignored:
            log.warning("ignored jobs of slots this worker does not have: %s", claim.ignored)
        await self._release(orphans)  # given back at once if the worker is stopping
        if claim.next_due is not None:
            self._arm_due_timer(claim.next_due)
        return True

    def _claimed(self, kind: str, jobs: int, began: float) -> None:
        if self.on_claim is not None:
            self.on_claim(kind, jobs, time.monotonic() - began)

    def _arm_due_timer(self, due: int) -> None:
        """Delayed jobs (run_at) and retries start on time without polling tightly: after a
        target runs dry, one timer polls it when its earliest waiting job comes due (the
        claim that found it dry read that time)."""
        if self._due_at is not None and self._due_at <= due:
            return
        if self._due_timer is not None:
            self._due_timer.cancel()
        self._due_at = due

        def fire() -> None:
            self._due_at = self._due_timer = None
            self.want(self.targets)

        self._due_timer = asyncio.get_running_loop().call_later(max(0.0, due - time.time()), fire)

    # --- the queues ---------------------------------------------------------------

    def queue(self, jobs: Iterable[Job]) -> list[Job]:
        """Put claimed jobs in their slots; returns those that must go back (their target
        or slot was removed while the claim was in flight, the worker is stopping, or the
        fence closed)."""
        orphans = []
        for job in jobs:
            target = self.targets.get(job.target)
            slot = target.slots.get(job.slot) if target else None
            if slot is None or self.stopping or self.fenced:
                orphans.append(job)
            else:
                slot.push(job)
        return orphans

    def held_ids(self) -> set[int]:
        """Every job the worker holds: queued, starting, running, or finished with its
        outcome not yet written."""
        held = self._held()
        for target in self.targets.values():
            for slot in target.slots.values():
                held.update(job.id for _, job in slot.queued)
                held.update(slot.running)
        return held

    async def stop(self) -> None:
        """Claim no more; returns once a claim in flight has ended (it gives its jobs back:
        see `queue`)."""
        self.stopping = True
        await self.idle()

    async def idle(self) -> None:
        """Returns once no claim is in flight."""
        async with self._lock:
            pass
