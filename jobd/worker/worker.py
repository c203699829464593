"""The jobd worker: wires its parts together.

The flow of a job:
    a poll (handlers) or the safety poll -> the Claimer claims rows into the slot queues
    -> the JobRunner starts what may start (the launcher spawns it), and stops it on a
    timeout or at shutdown -> the OutcomeWriter writes how it ended -> the Aftermath
    retries it, or publishes its event, delivers its callback and answers a manual run.
Database writes that fail are retried with backoff and never dropped; the outcomes
wait in memory meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from jobd import __version__
from jobd.config import WorkerConfig
from jobd.jobs import Job, Outcome
from jobd.runtime.reload import ReloadCounts
from jobd.runtime.rescuer import Rescuer
from jobd.store.instances import InstanceStore
from jobd.store.jobstore import JobStore
from jobd.worker.aftermath import Aftermath
from jobd.worker.claims import Claimer
from jobd.worker.fence import Fence, FencedWrites
from jobd.worker.handlers import WorkerHandlers
from jobd.worker.heartbeat import Heartbeat, rescue_options
from jobd.worker.inflight import InFlight
from jobd.worker.outcomes import OutcomeWriter
from jobd.worker.persist import persist
from jobd.worker.queues import TargetQueue
from jobd.worker.restart import settle_earlier_instances
from jobd.worker.runner import JobRunner

log = logging.getLogger("jobd.worker")

#: Keys whose change a reload cannot apply: they name who and where the worker is.
RESTART_KEYS = (
    "name", "listen", "master", "database", "table", "curve", "allow_insecure", "scheduler",
    "heartbeat_interval", "lease", "rescuer", "rescue_interval", "metrics",
)  # fmt: skip


class Worker:
    def __init__(self, config: WorkerConfig, store: JobStore, instances: InstanceStore) -> None:
        self.config = config
        self.store = store
        self.instances = instances
        self.started = time.monotonic()
        self.targets: dict[str, TargetQueue] = {
            name: TargetQueue.from_config(name, target) for name, target in config.targets.items()
        }
        self.stopping = False
        #: Set when a core loop died of a bug; the daemon then stops and exits non-zero.
        self.crashed: BaseException | None = None
        self.on_crash: Callable[[], None] | None = None
        #: Called after the targets changed (the master link re-registers with it).
        self.on_targets_changed: Callable[[], None] | None = None
        self.reloads = ReloadCounts()
        #: The rescuer of a worker with `rescuer: true` (the daemon starts it).
        self.rescuer: Rescuer | None = None
        self.inflight = InFlight()
        self.runner = JobRunner(
            config, self.targets, self.inflight, self._mark_running, self._job_finished,
            lambda job: self.aftermath.emit("started", job),
        )  # fmt: skip
        self.claimer = Claimer(
            store, self.targets, config.fetch_limit, self._held_outside_queues,
            self.runner.start_ready, self.release, self.inflight.spawn,
        )  # fmt: skip
        self.aftermath = Aftermath(
            config, self.targets, self.claimer.poll_at, self._record_callback
        )
        self.fenced_writes = FencedWrites(self.aftermath.given_back)
        self.writer = OutcomeWriter(
            store, self.aftermath.retry_for, self.aftermath.written,
            lambda: bool(self.runner.running), self.fenced_writes,
        )  # fmt: skip
        fence = Fence(
            store, self.targets, self.claimer, self.runner, self.writer, self.inflight,
            self.release,
        )  # fmt: skip
        self.heartbeat = Heartbeat(
            instances, config, lambda: rescue_options(self.targets), fence, store.instance
        )
        self.handlers = WorkerHandlers(self).table
        self._loops: dict[str, asyncio.Task[None]] = {}

    # --- life cycle ---------------------------------------------------------------

    async def recover(self) -> None:
        """Register this instance, then settle what earlier ones left behind."""
        await self.heartbeat.register()
        await settle_earlier_instances(
            self.config, self.instances, self.store.instance, self.targets
        )

    def start(self) -> None:
        self._loops["claim"] = asyncio.create_task(self.claimer.run(), name="claim")
        self._loops["writer"] = asyncio.create_task(self.writer.run(), name="writer")
        self._loops["heartbeat"] = asyncio.create_task(self.heartbeat.run(), name="heartbeat")
        for task in self._loops.values():
            task.add_done_callback(self._loop_ended)
        self._start_safety_poll()
        self.claimer.want(self.targets)  # whatever is waiting already

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

    async def _safety_poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            self.claimer.want(self.targets)

    async def stop(self, fast: asyncio.Event | None = None, write_timeout: float = 10.0) -> None:
        """Graceful shutdown: stop claiming, put queued jobs back, let running jobs finish
        for up to shutdown_timeout (or until `fast` is set), then stop them (SIGTERM, SIGKILL
        after kill_grace) and record them as retried or failed with the reason."""
        self.stopping = self.runner.stopping = True
        await self.claimer.stop()  # a claim in flight gives its jobs back (Claimer.queue)
        await self.release(job for target in self.targets.values() for job in target.drain())
        await self._let_running_jobs_finish(fast)
        reason = f"worker {self.config.name} stopped while the job was running"
        while self.inflight:
            grace = 0.0 if fast is not None and fast.is_set() else self.config.kill_grace
            await self.runner.stop_running(reason, grace)
            await self.inflight.wait(0.5)  # a job whose spawn was under way: next round
        if not await self.writer.drain(write_timeout):
            # The database is away: the rows stay 'running' and the next start of this
            # worker settles them (retry or fail) by the same rules.
            log.error("%d outcomes could not be written before exit", self.writer.pending)
        await self.aftermath.stop(write_timeout)
        for task in self._loops.values():
            task.cancel()
        await asyncio.gather(*self._loops.values(), return_exceptions=True)
        await self.heartbeat.end(write_timeout)  # heartbeating until now: never rescued

    async def _let_running_jobs_finish(self, fast: asyncio.Event | None) -> None:
        """Until every job has finished, shutdown_timeout has passed, or `fast` is set."""
        if not self.inflight:
            return
        waiters = [asyncio.ensure_future(self.inflight.wait())]
        if fast is not None:
            waiters.append(asyncio.ensure_future(fast.wait()))
        await asyncio.wait(
            waiters, timeout=self.config.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waiters:
            waiter.cancel()

    def apply_config(self, new: WorkerConfig) -> None:
        """Reload: take new targets, slots, concurrency, options, launcher and log level
        without dropping a running job (jobd.runtime.reload has refused what needs a
        restart)."""
        released: list[Job] = []
        for name in set(self.targets) - set(new.targets):
            released += self.targets.pop(name).drain()
        for name, target_config in new.targets.items():
            if name in self.targets:
                released += self.targets[name].reconfigure(target_config)
            else:
                self.targets[name] = TargetQueue.from_config(name, target_config)
        poll_interval_changed = new.poll_interval != self.config.poll_interval
        self.config = self.aftermath.config = new
        self.runner.reconfigure(new)
        self.claimer.fetch_limit = new.fetch_limit
        if poll_interval_changed:
            self._start_safety_poll()
        logging.getLogger().setLevel(new.log_level.upper())
        self.inflight.spawn(self.release(released))
        self.targets_changed()
        self.claimer.want(self.targets)

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

    def targets_changed(self) -> None:
        if self.on_targets_changed is not None:
            self.on_targets_changed()

    # --- what the parts share -----------------------------------------------------

    def _held_outside_queues(self) -> set[int]:
        """Jobs running, or finished with their outcome not written yet."""
        return set(self.runner.running) | self.writer.unwritten

    def _job_finished(self, job: Job, outcome: Outcome, wants_claim: bool) -> None:
        self.writer.put(job, outcome)
        self.claimer.job_freed(job.target, wants_claim)

    async def _mark_running(self, jobs: list[Job]) -> list[int]:
        marked = await persist(
            "mark running", lambda: self.store.mark_running([j.id for j in jobs])
        )
        self.fenced_writes("marking it running", [j for j in jobs if j.id not in marked])
        return marked

    async def _record_callback(self, job_id: int, result: str) -> None:
        await persist("callback result", lambda: self.store.record_callback(job_id, result))

    async def release(self, jobs: Iterable[Job]) -> None:
        """Give claimed jobs that will not start here back to the table."""
        jobs = list(jobs)
        if not jobs:
            return
        fenced = await persist("release", lambda: self.store.release_jobs([j.id for j in jobs]))
        self.fenced_writes("giving it back", [j for j in jobs if j.id in fenced])
        self.aftermath.given_back(jobs)
