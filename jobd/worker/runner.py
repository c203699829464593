"""Running the jobs a worker has claimed: which queued jobs may start, their start (the
launcher spawns the process), their timeouts, the signals sent to them, and stopping
them (a timeout, a shutdown).  Knows no database: marking rows running is a callable
it is given, and each outcome goes to `finished`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable

from jobd.config import LauncherConfig, WorkerConfig
from jobd.jobs import Job, Outcome
from jobd.worker.inflight import InFlight
from jobd.worker.launcher import Launcher, LaunchError, RunningJob, launch_failure
from jobd.worker.queues import TargetQueue

log = logging.getLogger("jobd.worker")


def instance_id(config: WorkerConfig) -> str:
    """Who this worker is on its host, across its restarts: its name and the queue it
    takes jobs from (the JOBD_WORKER_INSTANCE of its jobs, by which a restart finds what
    an earlier run left; not the instance of one start in the workers table)."""
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


class JobRunner:
    """Starts the jobs of `targets` (the worker's queues) as their slots allow.

    `mark_running(jobs)`: accepted rows to running, before their processes start; returns
    the ids it marked (a row no longer held is not, and its job does not start).
    `finished(job, outcome, wants_claim)`: a job ended (`wants_claim`: its slot would
    claim now).  `started(job)`: a job's process is running."""

    def __init__(
        self,
        config: WorkerConfig,
        targets: dict[str, TargetQueue],
        inflight: InFlight,
        mark_running: Callable[[list[Job]], Awaitable[list[int]]],
        finished: Callable[[Job, Outcome, bool], None],
        started: Callable[[Job], None],
    ) -> None:
        self.config = config
        self.targets = targets
        self.launchers = make_launchers(config)
        self.running: dict[int, RunningJob] = {}
        #: Why a running job is being stopped by the worker (timeout, shutdown).
        self.interrupted: dict[int, str] = {}
        self.stopping = False
        #: Closed by the fence: start nothing (jobd.worker.heartbeat).
        self.fenced = False
        self._inflight = inflight
        self._mark_running = mark_running
        self._finished = finished
        self._started = started
        self._timeouts: dict[int, asyncio.TimerHandle] = {}
        self._start_pending = False
        self._loop = asyncio.get_running_loop()

    def reconfigure(self, config: WorkerConfig) -> None:
        self.config = config
        self.launchers = make_launchers(config)

    # --- starting -----------------------------------------------------------------

    def start_ready(self) -> None:
        """Start every queued job its slot has a place for: those the claim marked
        running at once, the others after one mark_running for all of them."""
        self._start_pending = False
        if self.stopping or self.fenced:
            return
        batch = [
            job
            for target in self.targets.values()
            for slot in target.slots.values()
            for job in slot.pop_startable(target.paused)
        ]
        for job in batch:
            if job.marked_running:  # the claim marked it: start it now
                self._run(job)
        unmarked = [job for job in batch if not job.marked_running]
        if unmarked:
            self._inflight.spawn(self._start_batch(unmarked))

    def _start_soon(self) -> None:
        """A job claimed ahead starts now, not after the next claim; the jobs that finish
        in one turn of the event loop start their successors together (one UPDATE)."""
        if not self._start_pending:
            self._start_pending = True
            self._loop.call_soon(self.start_ready)

    async def _start_batch(self, batch: list[Job]) -> None:
        marked = set(await self._mark_running(batch))
        for job in batch:
            if job.id in marked and not self.fenced:
                job.attempts += 1
                job.marked_running = True
                self._run(job)
            else:
                self._leave(job)

    def _leave(self, job: Job) -> None:
        """A job taken from its slot that will not start here after all."""
        target = self.targets.get(job.target)
        slot = target.slots.get(job.slot) if target else None
        if slot is not None:
            slot.running.discard(job.id)
        self._start_soon()

    def _run(self, job: Job) -> None:
        """Start a job's process; `_ended` takes it from there.  Shutdown waits for `done`,
        which settles when the outcome is handed on."""
        launcher = self.launchers.get(job.target) or self.launchers[None]
        done = self._loop.create_future()
        self._inflight.track(done)
        try:
            running = launcher.start(job, lambda outcome: self._ended(job, outcome, done))
        except LaunchError as exc:
            log.error("job %d %s/%s could not start: %s", job.id, job.target, job.slot, exc)
            self._finish(job, launch_failure(exc), done)
            return
        self.running[job.id] = running
        log.info("job %d %s/%s started pid %d", job.id, job.target, job.slot, running.pid)
        self._started(job)
        target = self.targets.get(job.target)
        timeout = target.options.timeout if target else 0.0
        if timeout > 0:
            reason = f"timed out after {timeout:g} s"
            grace = self.config.kill_grace
            self._timeouts[job.id] = self._loop.call_later(
                timeout, lambda: self._inflight.spawn(self.interrupt(job.id, reason, grace))
            )

    # --- ending -------------------------------------------------------------------

    def _ended(self, job: Job, outcome: Outcome, done: asyncio.Future[None]) -> None:
        self.running.pop(job.id, None)
        timer = self._timeouts.pop(job.id, None)
        if timer is not None:
            timer.cancel()
        reason = self.interrupted.pop(job.id, None)
        if reason is not None:
            outcome = dataclasses.replace(
                outcome,
                result="fail",
                signal=outcome.signal or "SIGTERM",
                stderr=f"{outcome.stderr}\njobd: {reason}\n",
                note=reason,
            )
        log.info(
            "job %d %s/%s finished in %.3f s: %s code=%s signal=%s",
            job.id, job.target, job.slot, outcome.duration, outcome.result,
            outcome.code, outcome.signal,
        )  # fmt: skip
        self._finish(job, outcome, done)

    def _finish(self, job: Job, outcome: Outcome, done: asyncio.Future[None]) -> None:
        target = self.targets.get(job.target)
        slot = target.slots.get(job.slot) if target else None
        if slot is not None:
            slot.running.discard(job.id)
            slot.record_duration(outcome.duration or 0.0)
        self._start_soon()
        self._finished(job, outcome, slot is not None and slot.wants_claim())
        done.set_result(None)

    # --- stopping and signals -----------------------------------------------------

    async def interrupt(self, job_id: int, reason: str, grace: float) -> None:
        """Stop a running job (SIGTERM, SIGKILL after `grace`); its outcome says why."""
        running = self.running.get(job_id)
        if running is not None:
            self.interrupted.setdefault(job_id, reason)
            await running.terminate(grace)

    async def stop_running(self, reason: str, grace: float) -> None:
        if self.running:
            log.warning("stopping %d running jobs", len(self.running))
            await asyncio.gather(*(self.interrupt(i, reason, grace) for i in list(self.running)))

    def send_signal(self, job_id: int, sig: signal.Signals) -> bool:
        """Signal a running job's process group; False when it is not running here."""
        running = self.running.get(job_id)
        if running is None:
            return False
        running.send_signal(sig)
        log.info("sent %s to job %d", sig.name, job_id)
        return True
