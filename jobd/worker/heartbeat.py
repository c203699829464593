"""This worker's instance in the workers table (jobd.store.instances), and the fence.

The instance writes its heartbeat every heartbeat_interval seconds.  A rescuer takes its
rows back once the heartbeat is older than the lease, by the database's clock; so a
worker that cannot reach the database must stop what a rescuer may hand to another
worker before its lease runs out.  By its own monotonic clock, from the moment it sent
the last heartbeat that succeeded (the database wrote it later, so the lease the
rescuer sees ends later still):

    lease / 2                                   stop claiming; queued jobs are held back
    max(lease / 2, lease - interval - grace)    stop the running jobs (SIGTERM, then
                                                SIGKILL by lease - interval at the latest)
    lease                                       a rescuer may take the rows back

When the database answers again, the instance goes on (the held back jobs are given
back, claiming resumes) if its row is still running; if it was rescued, nothing of it
is written over rows it no longer holds, and the worker starts a fresh instance.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

from jobd import __version__
from jobd.config import WorkerConfig
from jobd.runtime.backoff import Backoff
from jobd.store.instances import InstanceStore, new_instance_id
from jobd.store.pool import StorageError
from jobd.worker.persist import persist

log = logging.getLogger("jobd.worker")

#: Pauses between heartbeats tried again after a failure, in seconds (at most half the
#: interval).
RETRY_FIRST, RETRY_MOST = 0.2, 1.0


class Fenced(Protocol):
    """What the worker does when the fence closes and opens."""

    def stop_claiming(self) -> None: ...

    def stop_jobs(self, reason: str, grace: float) -> None: ...

    def resume(self) -> None: ...

    async def renew(self, instance: str, reason: str) -> None: ...


class Heartbeat:
    """`targets()`: the targets with the options a rescuer needs (recorded in the row)."""

    def __init__(
        self,
        store: InstanceStore,
        config: WorkerConfig,
        targets: Callable[[], dict[str, Any]],
        fence: Fenced,
        instance: str,
    ) -> None:
        self.store = store
        self.config = config
        self._targets = targets
        self._fence = fence
        self.instance = instance
        self.host = socket.gethostname()
        self.fenced = False
        #: Instances this worker has started (a rescued one is followed by a fresh one).
        self.instances = 1
        self._loop = asyncio.get_running_loop()
        self.last_ok = self._loop.time()
        self._timers: list[asyncio.TimerHandle] = []
        self._failing = False

    @property
    def interval(self) -> float:
        return self.config.heartbeat_interval

    @property
    def lease(self) -> float:
        return self.config.lease

    async def register(self) -> None:
        """Write this instance's row; the fence counts from now."""
        await persist(
            "registering the instance",
            lambda: self.store.register(
                self.instance, self.config.name, self.host, os.getpid(), __version__,
                self._targets(), self.lease,
            ),
        )  # fmt: skip
        self._beat_ok(self._loop.time())
        log.info(
            "instance %s of worker %s: heartbeat every %g s, lease %g s",
            self.instance, self.config.name, self.interval, self.lease,
        )  # fmt: skip

    async def run(self) -> None:
        # After a failed heartbeat the next one is tried soon, not an interval later: the
        # fence then closes only on an outage of about half the lease.
        retry = Backoff(RETRY_FIRST, max(RETRY_FIRST, min(RETRY_MOST, self.interval / 2)))
        while True:
            sent = self._loop.time()
            if await self.beat(sent):
                retry.reset()
                pause = self.interval - (self._loop.time() - sent)
            else:
                pause = retry.next()
            await asyncio.sleep(max(0.0, pause))

    async def beat(self, sent: float) -> bool:
        """One heartbeat, which may not take longer than an interval; False if it was not
        written."""
        write = self.store.heartbeat(self.instance, self.lease, self._targets())
        try:
            alive = await asyncio.wait_for(write, self.interval)
        except (StorageError, TimeoutError) as exc:
            if not self._failing:
                self._failing = True
                log.warning("the heartbeat failed: %s", exc or "no answer in time")
            return False
        if self._failing:
            self._failing = False
            log.info("the heartbeat reaches the database again")
        if alive:
            self._beat_ok(sent)
        else:
            await self._rescued()
        return True

    def _beat_ok(self, sent: float) -> None:
        for timer in self._timers:
            timer.cancel()
        self.last_ok = sent
        stop_jobs = max(self.lease / 2, self.lease - self.interval - self.config.kill_grace)
        grace = self.lease - self.interval - stop_jobs
        self._timers = [
            self._loop.call_at(sent + self.lease / 2, self._stop_claiming),
            self._loop.call_at(sent + stop_jobs, self._stop_jobs, grace),
        ]
        if self.fenced:
            self.fenced = False
            log.warning("the heartbeat is written again: claiming resumes")
            self._fence.resume()

    def _stop_claiming(self) -> None:
        if not self.fenced:
            self.fenced = True
            log.warning(
                "no heartbeat written for %.1f s (lease %g s): claiming stops",
                self._loop.time() - self.last_ok, self.lease,
            )  # fmt: skip
            self._fence.stop_claiming()

    def _stop_jobs(self, grace: float) -> None:
        reason = (
            f"worker {self.config.name} could not write its heartbeat for"
            f" {self._loop.time() - self.last_ok:.1f} s; the job was stopped before the"
            f" lease ran out"
        )
        self._fence.stop_jobs(reason, grace)

    async def _rescued(self) -> None:
        """The instance's row is not running any more: its rows were settled elsewhere."""
        old, self.instance = self.instance, new_instance_id()
        log.error("instance %s was rescued: its rows are not its own; starting instance %s",
                  old, self.instance)  # fmt: skip
        for timer in self._timers:
            timer.cancel()
        self.fenced = True
        self._fence.stop_claiming()
        await self._fence.renew(self.instance, f"instance {old} of worker {self.config.name}"
                                " was rescued while the job was running")  # fmt: skip
        self.instances += 1
        await self.register()  # its first heartbeat opens the fence again

    async def end(self, timeout: float) -> None:
        """Mark the instance stopped (a graceful end, every outcome written)."""
        for timer in self._timers:
            timer.cancel()
        try:
            await asyncio.wait_for(self.store.end(self.instance), timeout)
        except (StorageError, TimeoutError) as exc:
            log.error("the instance could not be marked stopped (%s): it will be rescued", exc)

    def describe(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "heartbeat_interval": self.interval,
            "lease": self.lease,
            "since_heartbeat": round(self._loop.time() - self.last_ok, 3),
            "fenced": self.fenced,
            "instances": self.instances,
        }


def rescue_options(targets: dict[str, Any]) -> dict[str, Any]:
    """What a rescuer needs to know of each target (recorded with the instance)."""
    return {
        name: {
            "slots": target.concurrency(),
            "max_attempts": target.options.max_attempts,
            "on_rescue": target.options.on_rescue,
            "max_rescues": target.options.max_rescues,
        }
        for name, target in targets.items()
    }
