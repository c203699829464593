"""The jobd worker: wires the job store, the launcher and the queues together and
answers the worker requests of the protocol (one handler per request type).

The flow of a job:
    poll / safety poll -> `_claim_loop` claims rows into slot queues
    -> `_start_ready` takes what may start, marks it running, spawns it
    -> `_run_job` waits for the process -> `_writer_loop` writes the outcome.
Database writes that fail are retried with backoff and never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from jobd import __version__
from jobd.config import WorkerConfig
from jobd.jobs import Job, Outcome
from jobd.launcher import Launcher, LaunchError, RunningJob, launch_failure
from jobd.protocol import ErrorCode, RequestError
from jobd.queues import TargetQueue
from jobd.storage import JobStore, ManualRow, StorageError

log = logging.getLogger("jobd.worker")

#: Backoff between retries of a failed database operation, in seconds.
RETRY_MIN, RETRY_MAX = 0.2, 5.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Worker:
    def __init__(self, config: WorkerConfig, store: JobStore, launcher: Launcher) -> None:
        self.config = config
        self.store = store
        self.launcher = launcher
        self.started = time.monotonic()
        self.targets: dict[str, TargetQueue] = {
            name: TargetQueue.from_config(name, slots) for name, slots in config.targets.items()
        }
        #: Targets with a poll not yet carried out in full (no room yet, or a claim came back full).
        self.wanted: set[str] = set()
        self.running: dict[int, RunningJob] = {}
        self.manual_results: dict[int, asyncio.Future[Outcome]] = {}
        self.stopping = False
        #: Called after add-target, remove-target or set-target-concurrency changed the
        #: targets (the master link re-registers with it).
        self.on_targets_changed: Callable[[], None] | None = None
        self._wake = asyncio.Event()
        self._outcomes: asyncio.Queue[tuple[Job, Outcome]] = asyncio.Queue()
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
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

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._writer_loop(), name="writer"),
        ]
        if self.config.poll_interval > 0:
            self._loops.append(asyncio.create_task(self._safety_poll_loop(), name="safety-poll"))
        self.poll(self.targets)  # whatever is waiting already

    async def stop(self, kill: bool = False) -> None:
        """Stop claiming, put queued jobs back, let running jobs finish (or kill them),
        and write every outcome before returning."""
        self.stopping = True
        for target in self.targets.values():
            await self._release(job for slot in target.slots.values() for job in slot.drain())
        if kill:
            for running in list(self.running.values()):
                running.send_signal(signal.SIGKILL)
        if self._job_tasks:
            await asyncio.gather(*self._job_tasks, return_exceptions=True)
        await self._outcomes.join()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)

    def registration(self) -> dict[str, Any]:
        """What the master needs to know of this worker (register-worker data)."""
        return {
            "name": self.config.name,
            "targets": {name: t.concurrency() for name, t in self.targets.items()},
            "version": __version__,
            "listen": self.config.listen,
        }

    def _targets_changed(self) -> None:
        if self.on_targets_changed is not None:
            self.on_targets_changed()

    # --- claiming and starting ----------------------------------------------------

    def poll(self, targets: Iterable[str]) -> None:
        self.wanted.update(targets)
        self._wake.set()

    async def _safety_poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            self.poll(self.targets)

    def _claim_wants(self) -> dict[str, dict[str, int]]:
        wants = {}
        for name in self.wanted:
            target = self.targets.get(name)
            if target is None:
                continue
            room = target.room()
            if not target.paused and any(room.values()):
                wants[name] = room
        return wants

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
            if self.stopping or not wants or limit <= 0:
                continue
            try:
                claim = await self.store.claim_jobs(
                    wants, {t: self.targets[t].slots.keys() for t in wants}, limit
                )
            except StorageError as exc:
                log.warning("claim failed, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                self._wake.set()
                continue
            delay = RETRY_MIN
            self.wanted -= set(wants) - claim.full
            if claim.full:
                self._wake.set()  # claim again once there is room
            if claim.ignored:
                log.warning("ignored jobs of slots this worker does not have: %s", claim.ignored)
            await self._enqueue(claim.accepted)
            self._start_ready()

    async def _enqueue(self, jobs: Iterable[Job]) -> None:
        orphans = []
        for job in jobs:
            target = self.targets.get(job.target)
            slot = target.slots.get(job.slot) if target else None
            if slot is None or self.stopping:  # removed while the claim was in flight
                orphans.append(job)
            else:
                slot.push(job)
        await self._release(orphans)

    def _start_ready(self) -> None:
        batch = [
            job
            for target in self.targets.values()
            for slot in target.slots.values()
            for job in slot.pop_startable(target.paused)
        ]
        if batch and not self.stopping:
            task = asyncio.create_task(self._start_batch(batch))
            self._job_tasks.add(task)
            task.add_done_callback(self._job_tasks.discard)

    async def _start_batch(self, batch: list[Job]) -> None:
        await self._persist("mark running", lambda: self.store.mark_running([j.id for j in batch]))
        for job in batch:
            task = asyncio.create_task(self._run_job(job))
            self._job_tasks.add(task)
            task.add_done_callback(self._job_tasks.discard)

    async def _run_job(self, job: Job) -> None:
        try:
            running = await self.launcher.start(job)
        except LaunchError as exc:
            outcome = launch_failure(exc)
            log.error("job %d %s/%s could not start: %s", job.id, job.target, job.slot, exc)
        else:
            self.running[job.id] = running
            log.info("job %d %s/%s started pid %d", job.id, job.target, job.slot, running.pid)
            try:
                outcome = await running.wait()
            finally:
                self.running.pop(job.id, None)
            log.info(
                "job %d %s/%s finished in %.3f s: %s code=%s signal=%s",
                job.id, job.target, job.slot, outcome.duration, outcome.result,
                outcome.return_code, outcome.sig,
            )  # fmt: skip
        self._free(job)
        self._outcomes.put_nowait((job, outcome))

    def _free(self, job: Job) -> None:
        target = self.targets.get(job.target)
        slot = target.slots.get(job.slot) if target else None
        if slot is not None:
            slot.running.discard(job.id)
        self._wake.set()

    # --- writing ------------------------------------------------------------------

    async def _persist(self, what: str, operation: Callable[[], Awaitable[None]]) -> None:
        """Run a database write until it succeeds: a result is never dropped."""
        delay = RETRY_MIN
        while True:
            try:
                await operation()
                return
            except StorageError as exc:
                log.warning("%s failed, retrying in %.1f s: %s", what, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _writer_loop(self) -> None:
        """Writes outcomes in batches: everything finished since the last write goes
        in one transaction."""
        while True:
            batch = [await self._outcomes.get()]
            while not self._outcomes.empty():
                batch.append(self._outcomes.get_nowait())
            pairs = [(job.id, outcome) for job, outcome in batch]
            await self._persist("writing outcomes", lambda p=pairs: self.store.record_outcomes(p))
            for job, outcome in batch:
                future = self.manual_results.pop(job.id, None)
                if future is not None and not future.done():
                    future.set_result(outcome)
                self._outcomes.task_done()

    async def _release(self, jobs: Iterable[Job]) -> None:
        """Give claimed jobs that will not start here back to the table."""
        jobs = list(jobs)
        for status in ("waiting", "manual"):
            ids = [j.id for j in jobs if j.manual == (status == "manual")]
            if ids:
                await self._persist(
                    "release", lambda i=ids, s=status: self.store.release_jobs(i, s)
                )
        for job in jobs:
            future = self.manual_results.pop(job.id, None)
            if future is not None and not future.done():
                future.set_exception(RuntimeError("the target was removed before the job started"))

    # --- request handlers ---------------------------------------------------------

    def _served(self, targets: list[str] | None) -> list[str]:
        """The named targets (all when none are named); unknown names are an error."""
        if not targets:
            return list(self.targets)
        unknown = [t for t in targets if t not in self.targets]
        if unknown:
            raise RequestError(
                ErrorCode.NOT_FOUND,
                f"worker {self.config.name} does not serve: {', '.join(unknown)}",
            )
        return targets

    def _target(self, name: str) -> TargetQueue:
        target = self.targets.get(name)
        if target is None:
            raise RequestError(
                ErrorCode.NOT_FOUND, f"worker {self.config.name} does not serve {name}"
            )
        return target

    async def handle_ping(self, data: dict[str, Any]) -> Any:
        return {"name": self.config.name, "version": __version__}

    async def handle_poll(self, data: dict[str, Any]) -> Any:
        targets = self._served(data["targets"])
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
            "targets": {name: t.status() for name, t in self.targets.items()},
            "running": sorted(self.running),
            "pending_writes": self._outcomes.qsize(),
        }

    def _manual_refusal(self, row: ManualRow) -> str | None:
        if row.status != "manual":
            return f"status is {row.status}, not manual"
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
        await self._enqueue(Job(r.id, r.target, r.slot, r.priority, manual=True) for r in accepted)
        self._wake.set()
        results: dict[int, Any] = {}
        for job_id, future in futures.items():
            try:
                results[job_id] = (await future).as_reply()
            except RuntimeError as exc:
                errors[job_id] = str(exc)
        return {"jobs": results, "errors": errors}

    async def handle_add_target(self, data: dict[str, Any]) -> Any:
        name = data["target"]
        if name in self.targets:
            raise RequestError(ErrorCode.CONFLICT, f"target {name} is served already")
        self.targets[name] = TargetQueue.from_config(name, data["slots"])
        log.info("added target %s %s", name, data["slots"])
        self._targets_changed()
        self.poll([name])
        return {"target": name, "slots": self.targets[name].concurrency()}

    async def handle_remove_target(self, data: dict[str, Any]) -> Any:
        target = self._target(data["target"])
        del self.targets[target.name]
        self.wanted.discard(target.name)
        queued = [job for slot in target.slots.values() for job in slot.drain()]
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
                sent[job_id] = sig.name
                log.info("sent %s to job %d", sig.name, job_id)
        return {"jobs": sent, "errors": errors}
