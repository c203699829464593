"""The jobd worker: wires the job store, the launcher and the queues together and
answers the worker requests of the protocol (one handler per request type).

The flow of a job:
    poll / safety poll -> `_claim_loop` claims rows into slot queues
    -> `_start_ready` takes what may start -> `_start_batch` marks them running
    -> `_run_job` spawns and waits (timeout, shutdown) -> `_writer_loop` writes the
    outcome, or sends the job back to waiting for a retry.
Database writes that fail are retried with backoff and never dropped; the results
wait in memory meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from jobd import __version__
from jobd.callbacks import callback_payload, deliver
from jobd.config import LauncherConfig, TargetConfig, WorkerConfig
from jobd.jobs import Job, Outcome, Retry
from jobd.launcher import (
    Launcher,
    LaunchError,
    RunningJob,
    find_leftovers,
    launch_failure,
    stop_leftovers,
)
from jobd.protocol import ErrorCode, RequestError
from jobd.queues import TargetQueue
from jobd.service import rss_bytes
from jobd.storage import Claim, JobStore, ManualRow, SlotWant, StorageError

log = logging.getLogger("jobd.worker")

#: Backoff between retries of a failed database operation, in seconds.
RETRY_MIN, RETRY_MAX = 0.2, 5.0
#: Seconds the writer waits for more outcomes while other jobs run (see _writer_loop).
WRITE_COALESCE = 0.01
#: Characters of output, all jobs and both streams together, in a run-manual reply.
REPLY_OUTPUT_BUDGET = 192 * 1024  # at most 768 KiB of UTF-8
#: Most rows a poll may name for claim_named; a poll naming more claims as usual (rows in
#: such numbers are a batch, which claim_jobs takes best first in one go).
MAX_NAMED_CLAIM = 8
#: Keys whose change a reload cannot apply: they name who and where the worker is.
RESTART_KEYS = (
    "name", "listen", "master", "database", "table", "curve", "allow_insecure", "scheduler",
)  # fmt: skip


class ManualRunCancelled(Exception):
    """A reserved manual job that will not run here (target removed, worker stopping)."""


def instance_id(config: WorkerConfig) -> str:
    """Who this worker is on its host: its name and the queue it takes jobs from."""
    db = config.database
    return f"{config.name}@{db.host}:{db.port}/{db.database}/{config.table}"


def make_launchers(config: WorkerConfig) -> dict[str | None, Launcher]:
    """The launcher of each target that has its own, and the default one (key None)."""

    def launcher(section: LauncherConfig) -> Launcher:
        return Launcher(section, config.max_output_buffer, config.name, instance_id(config))

    launchers: dict[str | None, Launcher] = {None: launcher(config.launcher)}
    for name, target in config.targets.items():
        if target.launcher is not None:
            launchers[name] = launcher(target.launcher)
    return launchers


class Worker:
    def __init__(self, config: WorkerConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self.launchers = make_launchers(config)
        self.started = time.monotonic()
        self.targets: dict[str, TargetQueue] = {
            name: TargetQueue.from_config(name, target) for name, target in config.targets.items()
        }
        #: Targets with a poll not yet carried out in full (no room yet, or a claim came back full).
        self.wanted: set[str] = set()
        #: Targets polled while a claim was in flight: that claim may have missed their
        #: new rows, so they stay wanted whatever it returned.
        self._polled_since_claim: set[str] = set()
        self.running: dict[int, RunningJob] = {}
        #: Why a running job is being stopped by the worker (timeout, shutdown).
        self.interrupted: dict[int, str] = {}
        self.manual_results: dict[int, asyncio.Future[Outcome]] = {}
        self.stopping = False
        #: Set when a core loop died of a bug; the daemon then stops and exits non-zero.
        self.crashed: BaseException | None = None
        self.on_crash: Callable[[], None] | None = None
        #: Called after the targets changed (the master link re-registers with it).
        self.on_targets_changed: Callable[[], None] | None = None
        #: Called with each job event (started, finished); the master link relays them.
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self._due_timer: asyncio.TimerHandle | None = None
        self._due_at: float | None = None
        self._callbacks = asyncio.Semaphore(16)  # deliveries at once; the rest wait
        self._wake = asyncio.Event()
        self._claim_lock = asyncio.Lock()
        self._unwritten: set[int] = set()  # finished jobs whose outcome is not written yet
        self._start_pending = False
        self._claim_failed = False
        self._fetch_limited = False  # wanted targets wait for fetch_limit (queued jobs)
        self._outcomes: asyncio.Queue[tuple[Job, Outcome]] = asyncio.Queue()
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._timeouts: dict[int, asyncio.TimerHandle] = {}
        self._loop = asyncio.get_running_loop()
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._loops: dict[str, asyncio.Task[None]] = {}
        #: Jobs claimed so far: by target (claim_jobs) and by id (claim_named), for status.
        self.claimed = {"by_target": 0, "named": 0}
        # Coroutine functions, but for the plain ones answered as they are read.
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self.handle_ping,
            "poll": self.handle_poll,
            "pause": self.handle_pause,
            "continue": self.handle_continue,
            "status": self.handle_status,
            "run-manual": self.handle_run_manual,
            "add-target": self.handle_add_target,
            "remove-target": self.handle_remove_target,
            "set-target-concurrency": self.handle_set_target_concurrency,
            "send-signal": self.handle_send_signal,
        }

    # --- life cycle ---------------------------------------------------------------

    async def recover(self) -> None:
        """Settle what a previous life of this worker left behind (kill -9, power loss):
        stop its leftover job processes first, so no job runs twice at the same time,
        then give its rows back or settle them."""
        leftovers = find_leftovers(instance_id(self.config))
        if leftovers:
            log.warning("stopping %d processes left by a previous run", len(leftovers))
            await stop_leftovers(leftovers, self.config.kill_grace)
        recovery = await self._persist(
            "recovery", lambda: self.store.recover_worker(self.config.name, self._retries_left)
        )
        if recovery.released or recovery.retried or recovery.failed:
            log.warning(
                "recovered rows of a previous run: %d released, retried %s, failed %s",
                recovery.released, recovery.retried, recovery.failed,
            )  # fmt: skip

    def _retries_left(self, target: str, attempts: int) -> bool:
        queue = self.targets.get(target)
        return queue is not None and attempts < queue.options.max_attempts

    def start(self) -> None:
        self._loops["claim"] = asyncio.create_task(self._claim_loop(), name="claim")
        self._loops["writer"] = asyncio.create_task(self._writer_loop(), name="writer")
        for task in self._loops.values():
            task.add_done_callback(self._loop_ended)
        self._start_safety_poll()
        self.poll(self.targets)  # whatever is waiting already

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.crashed = task.exception()
        log.critical("the %s loop failed; stopping", task.get_name(), exc_info=self.crashed)
        if self.on_crash is not None:
            self.on_crash()

    def _start_safety_poll(self) -> None:
        old = self._loops.pop("safety-poll", None)
        if old is not None:
            old.cancel()
        if self.config.poll_interval > 0:
            self._loops["safety-poll"] = asyncio.create_task(self._safety_poll_loop())

    async def stop(self, fast: asyncio.Event | None = None, write_timeout: float = 10.0) -> None:
        """Graceful shutdown: stop claiming, put queued jobs back, let running jobs finish
        for up to shutdown_timeout (or until `fast` is set), then stop them (SIGTERM, SIGKILL
        after kill_grace) and record them as retried or failed with the reason."""
        self.stopping = True
        async with self._claim_lock:
            pass  # a claim in flight finishes, and gives its jobs back (see _queue)
        await self._release(job for target in self.targets.values() for job in target.drain())
        if self._in_flight:
            waiters = [asyncio.ensure_future(asyncio.wait(set(self._in_flight)))]
            if fast is not None:
                waiters.append(asyncio.ensure_future(fast.wait()))
            await asyncio.wait(
                waiters, timeout=self.config.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waiters:
                waiter.cancel()
        reason = f"worker {self.config.name} stopped while the job was running"
        while self._in_flight:
            if self.running:
                grace = 0.0 if fast is not None and fast.is_set() else self.config.kill_grace
                log.warning("stopping %d running jobs", len(self.running))
                await asyncio.gather(
                    *(self._interrupt(i, reason, grace) for i in list(self.running))
                )
            # A job whose spawn was under way is caught on the next round.
            if self._in_flight:
                await asyncio.wait(set(self._in_flight), timeout=0.5)
        try:
            await asyncio.wait_for(self._outcomes.join(), write_timeout)
        except TimeoutError:
            # The database is away: the rows stay 'running' and the next start of this
            # worker settles them (retry or fail) by the same rules.
            log.error("%d outcomes could not be written before exit", self._outcomes.qsize())
        if self._callback_tasks:
            _, late = await asyncio.wait(set(self._callback_tasks), timeout=write_timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d callbacks were not delivered before exit", len(late))
        for task in self._loops.values():
            task.cancel()
        await asyncio.gather(*self._loops.values(), return_exceptions=True)

    async def _interrupt(self, job_id: int, reason: str, grace: float) -> None:
        running = self.running.get(job_id)
        if running is not None:
            self.interrupted.setdefault(job_id, reason)
            await running.terminate(grace)

    def apply_config(self, new: WorkerConfig) -> None:
        """Reload: take new targets, slots, concurrency, options, launcher and log level
        without dropping a running job. Raises ValueError for changes that need a restart."""
        changed = [k for k in RESTART_KEYS if getattr(new, k) != getattr(self.config, k)]
        if changed:
            raise ValueError(f"{', '.join(changed)} cannot change on reload; restart jobd")
        released: list[Job] = []
        for name in set(self.targets) - set(new.targets):
            released += self.targets.pop(name).drain()
        for name, target_config in new.targets.items():
            if name in self.targets:
                released += self.targets[name].reconfigure(target_config)
            else:
                self.targets[name] = TargetQueue.from_config(name, target_config)
        self.launchers = make_launchers(new)
        poll_interval_changed = new.poll_interval != self.config.poll_interval
        self.config = new
        if poll_interval_changed:
            self._start_safety_poll()
        logging.getLogger().setLevel(new.log_level.upper())
        self._spawn(self._release(released))
        self._targets_changed()
        self.poll(self.targets)

    def registration(self) -> dict[str, Any]:
        """What the master needs to know of this worker (register-worker data)."""
        return {
            "name": self.config.name,
            "targets": {name: t.concurrency() for name, t in self.targets.items()},
            "version": __version__,
            "listen": self.config.listen,
            # For `jobctl targets`; targets added at run time have none.
            "descriptions": {
                name: t.options.description
                for name, t in self.targets.items()
                if t.options.description
            },
        }

    def _targets_changed(self) -> None:
        if self.on_targets_changed is not None:
            self.on_targets_changed()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        self._track(asyncio.ensure_future(coro))

    def _track(self, future: asyncio.Future[Any]) -> None:
        """Work that shutdown waits for: helper tasks, and each job until its outcome."""
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)

    # --- claiming and starting ----------------------------------------------------

    def poll(self, targets: Iterable[str]) -> None:
        targets = set(targets)
        self.wanted |= targets
        self._polled_since_claim |= targets
        self._wake.set()

    def poll_at(self, target: str, when: float) -> None:
        """Poll a target again at UNIX time `when` (a retry's not-before time)."""
        delay = max(0.0, when - time.time())
        asyncio.get_running_loop().call_later(delay, self.poll, [target])

    async def _safety_poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            self.poll(self.targets)

    def _claim_wants(self) -> dict[str, dict[str, SlotWant]]:
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

    def _held_ids(self) -> set[int]:
        """Every job this worker holds: queued, starting, running, or finished with its
        outcome not yet written."""
        held = set(self.running) | self._unwritten
        for target in self.targets.values():
            for slot in target.slots.values():
                held.update(job.id for _, job in slot.queued)
                held.update(slot.running)
        return held

    async def _claim_loop(self) -> None:
        delay = RETRY_MIN
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._start_ready()
            self.wanted &= set(self.targets)
            wants = self._claim_wants()
            queued = sum(t.queued_count() for t in self.targets.values())
            limit = self.config.fetch_limit - queued
            self._fetch_limited = bool(wants) and limit <= 0
            if self.stopping or not wants or limit <= 0:
                continue
            async with self._claim_lock:  # stop() waits for a claim in flight
                claimed = await self._claim(wants, limit)
            if not claimed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                self._wake.set()
                continue
            delay = RETRY_MIN

    async def _claim(self, wants: dict[str, dict[str, SlotWant]], limit: int) -> bool:
        """One claim: its jobs queued (or started); false when the database failed."""
        try:
            if self._claim_failed:
                # A claim whose commit went through but whose answer was lost left rows in
                # our name that we do not hold: give them back.
                released = await self.store.release_unknown(self._held_ids())
                if released:
                    log.warning("released %d rows of a claim whose answer was lost", released)
                self._claim_failed = False
            self._polled_since_claim.clear()
            orphans: list[Job] = []

            def committed(claim: Claim) -> None:
                # The jobs start once the claim is committed, before the rest of its
                # answer (the next due time) is read.
                orphans.extend(self._queue(claim.accepted))
                self._start_ready()

            known = {t: self.targets[t].slots.keys() for t in wants}
            claim = await self.store.claim_jobs(wants, known, limit, committed)
            self.claimed["by_target"] += len(claim.accepted)
        except StorageError as exc:
            self._claim_failed = True
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

    def _named_slots(self, target: str, ids: list[int]) -> list[str]:
        """The slots in which the rows a poll named may be claimed by id
        (JobStore.claim_named): those with a free place for each of them, when claiming
        them ahead of the usual way cannot pass over anything.  No slot (the usual claim
        then) while this worker knows of rows that may wait for the target (it is wanted:
        there priorities decide), after a failed claim, or when the worker holds one of
        the ids already."""
        queue = self.targets.get(target)
        if (
            queue is None
            or len(ids) > MAX_NAMED_CLAIM
            or self.stopping
            or target in self.wanted
            or self._claim_failed
            or not self._held_ids().isdisjoint(ids)
        ):
            return []
        return queue.slots_free_for(len(ids))

    def _claim_named(self, target: str, ids: list[int]) -> bool:
        """Claim the rows a poll named by their ids (the fast path of a job submitted
        alone: one round trip, no locking read); False when the poll must claim as usual,
        as it must while a claim is under way (the target may be wanted once it is done)."""
        if self._claim_lock.locked() or not self._named_slots(target, ids):
            return False
        self._spawn(self._claim_named_now(target, ids))
        return True

    async def _claim_named_now(self, target: str, ids: list[int]) -> None:
        jobs: list[Job] = []
        orphans: list[Job] = []
        async with self._claim_lock:
            free = self._named_slots(target, ids)  # again: a claim may have come first
            if free:
                try:
                    jobs = await self.store.claim_named(target, ids, free)
                    self.claimed["named"] += len(jobs)
                except StorageError as exc:
                    self._claim_failed = True  # the usual claim gives back what it took
                    log.warning("claim of jobs %s failed: %s", ids, exc)
                orphans = self._queue(jobs)
                self._start_ready()
        if len(jobs) < len(ids):
            self.poll([target])  # not all taken here: the usual claim looks
        await self._release(orphans)

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
            self.poll(self.targets)

        self._due_timer = asyncio.get_running_loop().call_later(max(0.0, due - time.time()), fire)

    def _queue(self, jobs: Iterable[Job]) -> list[Job]:
        """Put claimed jobs in their slots; returns those that must go back (their target
        or slot was removed while the claim was in flight, or the worker is stopping)."""
        orphans = []
        for job in jobs:
            target = self.targets.get(job.target)
            slot = target.slots.get(job.slot) if target else None
            if slot is None or self.stopping:
                orphans.append(job)
            else:
                slot.push(job)
        return orphans

    async def _enqueue(self, jobs: Iterable[Job]) -> None:
        await self._release(self._queue(jobs))

    def _start_ready(self) -> None:
        self._start_pending = False
        if self.stopping:
            return
        batch = [
            job
            for target in self.targets.values()
            for slot in target.slots.values()
            for job in slot.pop_startable(target.paused)
        ]
        for job in batch:
            if job.marked_running:  # the claim marked it: start it now
                self._run_job(job)
        unmarked = [job for job in batch if not job.marked_running]
        if unmarked:
            self._spawn(self._start_batch(unmarked))

    async def _start_batch(self, batch: list[Job]) -> None:
        await self._persist("mark running", lambda: self.store.mark_running([j.id for j in batch]))
        for job in batch:
            job.attempts += 1
            job.marked_running = True
            self._run_job(job)

    def _run_job(self, job: Job) -> None:
        """Start a job's process (the launcher spawns it); `_job_ended` takes it from
        there.  Shutdown waits for `done`, which settles when the outcome is queued."""
        launcher = self.launchers.get(job.target) or self.launchers[None]
        done = self._loop.create_future()
        self._track(done)
        try:
            running = launcher.start(job, lambda outcome: self._job_ended(job, outcome, done))
        except LaunchError as exc:
            log.error("job %d %s/%s could not start: %s", job.id, job.target, job.slot, exc)
            self._finish(job, launch_failure(exc), done)
            return
        self.running[job.id] = running
        log.info("job %d %s/%s started pid %d", job.id, job.target, job.slot, running.pid)
        self._emit("started", job)
        target = self.targets.get(job.target)
        timeout = target.options.timeout if target else 0.0
        if timeout > 0:
            reason = f"timed out after {timeout:g} s"
            grace = self.config.kill_grace
            self._timeouts[job.id] = self._loop.call_later(
                timeout, lambda: self._spawn(self._interrupt(job.id, reason, grace))
            )

    def _job_ended(self, job: Job, outcome: Outcome, done: asyncio.Future[None]) -> None:
        self.running.pop(job.id, None)
        timer = self._timeouts.pop(job.id, None)
        if timer is not None:
            timer.cancel()
        reason = self.interrupted.pop(job.id, None)
        if reason is not None:
            outcome = dataclasses.replace(
                outcome,
                result="fail",
                sig=outcome.sig or "SIGTERM",
                stderr=f"{outcome.stderr}\njobd: {reason}\n",
                note=reason,
            )
        log.info(
            "job %d %s/%s finished in %.3f s: %s code=%s signal=%s",
            job.id, job.target, job.slot, outcome.duration, outcome.result,
            outcome.return_code, outcome.sig,
        )  # fmt: skip
        self._finish(job, outcome, done)

    def _finish(self, job: Job, outcome: Outcome, done: asyncio.Future[None]) -> None:
        self._unwritten.add(job.id)
        self._free(job, outcome.duration)
        self._outcomes.put_nowait((job, outcome))
        done.set_result(None)

    def _free(self, job: Job, duration: float) -> None:
        target = self.targets.get(job.target)
        slot = target.slots.get(job.slot) if target else None
        if slot is not None:
            slot.running.discard(job.id)
            slot.record_duration(duration)
        # A job claimed ahead starts now, not after the next claim; the jobs that finish
        # in one turn of the event loop start their successors together (one UPDATE).
        if not self._start_pending:
            self._start_pending = True
            self._loop.call_soon(self._start_ready)
        # Wake the claim loop only when this place may lead to a claim: waking it after
        # every job of a long backlog would cost a turn of it per job for nothing.
        if self._fetch_limited or (
            slot is not None and job.target in self.wanted and slot.wants_claim()
        ):
            self._wake.set()

    # --- writing ------------------------------------------------------------------

    async def _persist(self, what: str, operation: Callable[[], Awaitable[Any]]) -> Any:
        """Run a database write until it succeeds: a result is never dropped."""
        delay = RETRY_MIN
        while True:
            try:
                return await operation()
            except StorageError as exc:
                if not exc.retryable:
                    raise
                log.warning("%s failed, retrying in %.1f s: %s", what, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _retry_for(self, job: Job, outcome: Outcome) -> Retry | None:
        """A failed automatic job with attempts left goes back to waiting; manual runs
        report to the operator who asked instead."""
        target = self.targets.get(job.target)
        options = target.options if target else TargetConfig(slots={})
        if outcome.result == "ok" or job.manual or job.attempts >= options.max_attempts:
            return None
        delay = options.retry_delay(job.attempts, random.random())
        run_at = int(time.time() + delay + 0.999)
        summary = (
            f"attempt {job.attempts}/{options.max_attempts}: {outcome.describe()}"
            f" after {outcome.duration:.1f} s; retry at {run_at}\n"
        )
        return Retry(run_at, summary)

    async def _writer_loop(self) -> None:
        """Writes outcomes in batches: everything finished since the last write goes
        in one transaction."""
        while True:
            batch = [await self._outcomes.get()]
            if self.running:
                # Jobs are still running: give them a moment to finish, so one UPDATE
                # carries several outcomes.  An idle worker writes at once.
                await asyncio.sleep(WRITE_COALESCE)
            while not self._outcomes.empty():
                batch.append(self._outcomes.get_nowait())
            rows = [(job.id, outcome, self._retry_for(job, outcome)) for job, outcome in batch]
            try:
                await self._persist(
                    "writing outcomes", lambda r=rows: self.store.record_outcomes(r)
                )
            except StorageError as exc:
                log.error("writing outcomes failed (%s); writing them one by one", exc)
                for row in rows:
                    await self._write_outcome_alone(*row)
            for (job, outcome), (_, _, retry) in zip(batch, rows, strict=True):
                if retry is not None:
                    log.info("job %d will be retried at %d", job.id, retry.run_at)
                    self.poll_at(job.target, retry.run_at)
                    self._emit("retry", job, outcome, run_at=retry.run_at)
                else:
                    self._emit("finished", job, outcome)
                    self._callback(job, outcome)
                future = self.manual_results.pop(job.id, None)
                if future is not None and not future.done():
                    future.set_result(outcome)
                self._unwritten.discard(job.id)
                self._outcomes.task_done()

    async def _write_outcome_alone(
        self, job_id: int, outcome: Outcome, retry: Retry | None
    ) -> None:
        """One outcome that the database refused as it was: first with characters the
        columns cannot hold (a 3-byte utf8 table) replaced, then with no output at all."""
        for attempt in (outcome, outcome.storable(), outcome.without_output()):
            try:
                await self._persist(
                    "writing an outcome",
                    lambda o=attempt: self.store.record_outcomes([(job_id, o, retry)]),
                )
                return
            except StorageError as exc:
                log.error("job %d: the outcome was refused: %s", job_id, exc)
        # Left 'running': the next start of this worker settles the row.

    def _emit(self, kind: str, job: Job, outcome: Outcome | None = None, **extra: Any) -> None:
        if self.on_event is None:
            return
        event: dict[str, Any] = {
            "event": kind,
            "id": job.id,
            "target": job.target,
            "slot": job.slot,
            "worker": self.config.name,
            "time": time.time(),
            "attempts": job.attempts,
            **extra,
        }
        if outcome is not None:
            event.update(outcome.as_reply())
            del event["stdout"], event["stderr"]  # events stay small; the row has the output
        self.on_event(event)

    def _callback(self, job: Job, outcome: Outcome) -> None:
        target = self.targets.get(job.target)
        url = job.callback_url or (target.options.callback_url if target else None)
        if url:
            task = asyncio.ensure_future(self._deliver_callback(url, job, outcome))
            self._callback_tasks.add(task)
            task.add_done_callback(self._callback_tasks.discard)

    async def _deliver_callback(self, url: str, job: Job, outcome: Outcome) -> None:
        settings = self.config.callbacks
        payload = callback_payload(job, outcome, settings.output_limit)
        async with self._callbacks:
            result = await deliver(url, payload, settings)
        log.info("job %d callback %s", job.id, result)
        await self._persist("callback result", lambda: self.store.record_callback(job.id, result))

    async def _release(self, jobs: Iterable[Job]) -> None:
        """Give claimed jobs that will not start here back to the table."""
        jobs = list(jobs)
        if not jobs:
            return
        await self._persist("release", lambda: self.store.release_jobs([j.id for j in jobs]))
        for job in jobs:
            future = self.manual_results.pop(job.id, None)
            if future is not None and not future.done():
                future.set_exception(ManualRunCancelled("the job was given back before it started"))

    # --- request handlers ---------------------------------------------------------

    def _served(self, targets: list[str] | None) -> list[str]:
        """The named targets (all when none are named); unknown names are an error."""
        if not targets:
            return list(self.targets)
        unknown = [t for t in targets if t not in self.targets]
        if unknown:
            names = ", ".join(unknown)
            raise RequestError(
                ErrorCode.NOT_FOUND, f"worker {self.config.name} does not serve {names}"
            )
        return targets

    def _target(self, name: str) -> TargetQueue:
        target = self.targets.get(name)
        if target is None:
            raise RequestError(
                ErrorCode.NOT_FOUND, f"worker {self.config.name} does not serve {name}"
            )
        return target

    def handle_ping(self, data: dict[str, Any]) -> Any:
        return {"name": self.config.name, "version": __version__}

    def handle_poll(self, data: dict[str, Any]) -> Any:
        # Answered as it is read (a plain handler: rpc.Dispatcher.start); the claim
        # sends its query in the next turn of the event loop.
        targets = self._served(data["targets"])
        if not (len(targets) == 1 and data["ids"] and self._claim_named(targets[0], data["ids"])):
            self.poll(targets)
        return {"targets": targets}

    async def handle_pause(self, data: dict[str, Any]) -> Any:
        targets = self._served(data["targets"])
        for name in targets:
            self.targets[name].paused = True
        log.info("paused %s", ", ".join(targets))
        return {"targets": targets}

    async def handle_continue(self, data: dict[str, Any]) -> Any:
        targets = self._served(data["targets"])
        for name in targets:
            self.targets[name].paused = False
        log.info("continued %s", ", ".join(targets))
        self.poll(targets)  # pokes that came while paused were kept; carry them out now
        return {"targets": targets}

    async def handle_status(self, data: dict[str, Any]) -> Any:
        return {
            "name": self.config.name,
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started, 3),
            "rss": rss_bytes(),
            "targets": {
                name: {**t.status(), "description": t.options.description}
                for name, t in self.targets.items()
            },
            "running": sorted(self.running),
            "pending_writes": self._outcomes.qsize(),
            "claimed": dict(self.claimed),
            # Targets whose rows may wait for this worker: polled, not yet found dry.
            "wanted": sorted(self.wanted),
        }

    def _manual_refusal(self, row: ManualRow) -> str | None:
        if row.status != "manual":
            return f"status is {row.status}, not manual"
        if row.worker is not None:
            return f"job {row.id} is being run by worker {row.worker}"
        target = self.targets.get(row.target)
        if target is None:
            return f"worker {self.config.name} does not serve target {row.target}"
        if row.slot not in target.slots:
            return f"worker {self.config.name} has no slot {row.slot} for target {row.target}"
        return None

    async def handle_run_manual(self, data: dict[str, Any]) -> Any:
        ids: list[int] = data["ids"]
        if self.stopping:
            raise RequestError(ErrorCode.UNAVAILABLE, "the worker is shutting down")
        try:
            accepted, errors = await self.store.accept_manual(ids, self._manual_refusal)
        except StorageError as exc:
            raise RequestError(ErrorCode.UNAVAILABLE, f"database: {exc}") from None
        futures: dict[int, asyncio.Future[Outcome]] = {}
        loop = asyncio.get_running_loop()
        for row in accepted:
            futures[row.id] = self.manual_results[row.id] = loop.create_future()
        await self._enqueue(row.job() for row in accepted)
        self._wake.set()
        results: dict[int, Any] = {}
        # The reply must stay well under a socket's message limit (the master's, when it
        # routes the request): the rows have the whole output.
        limit = max(1024, REPLY_OUTPUT_BUDGET // (2 * max(1, len(futures))))
        for job_id, future in futures.items():
            try:
                results[job_id] = (await future).as_reply(limit)
            except ManualRunCancelled as exc:
                errors[job_id] = str(exc)
        return {"jobs": results, "errors": errors}

    async def handle_add_target(self, data: dict[str, Any]) -> Any:
        name = data["target"]
        if name in self.targets:
            raise RequestError(ErrorCode.CONFLICT, f"target {name} is served already")
        self.targets[name] = TargetQueue.from_config(name, TargetConfig(slots=data["slots"]))
        log.info("added target %s %s", name, data["slots"])
        self._targets_changed()
        self.poll([name])
        return {"target": name, "slots": self.targets[name].concurrency()}

    async def handle_remove_target(self, data: dict[str, Any]) -> Any:
        target = self._target(data["target"])
        del self.targets[target.name]
        self.wanted.discard(target.name)
        queued = target.drain()
        await self._release(queued)
        log.info("removed target %s (%d queued jobs released)", target.name, len(queued))
        self._targets_changed()
        return {"target": target.name, "released": len(queued), "running": target.running_count()}

    async def handle_set_target_concurrency(self, data: dict[str, Any]) -> Any:
        target = self._target(data["target"])
        target.set_concurrency(data["slot"], data["concurrency"])
        log.info("target %s slot %s concurrency %d", target.name, data["slot"], data["concurrency"])
        self._targets_changed()
        self.poll([target.name])
        return {"target": target.name, "slots": target.concurrency()}

    async def handle_send_signal(self, data: dict[str, Any]) -> Any:
        sent: dict[int, str] = {}
        errors: dict[int, str] = {}
        for job_id, sig in data["jobs"].items():
            running = self.running.get(job_id)
            if running is None:
                errors[job_id] = f"job {job_id} is not running on worker {self.config.name}"
            else:
                running.send_signal(sig)
                sent[job_id] = signal.Signals(sig).name
                log.info("sent %s to job %d", sent[job_id], job_id)
        return {"jobs": sent, "errors": errors}
