"""The worker's requests (jobd.wire.protocol.WORKER_REQUESTS): one small handler each.

They answer on the worker's own socket and, through the master link, on its connection
to jobd-master.  Plain handlers answer as the request is read (jobd.wire.dispatch);
coroutine handlers get a task.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobd import __version__
from jobd.config import TargetConfig
from jobd.runtime.process import rss_bytes
from jobd.store.pool import StorageError
from jobd.store.rows import ManualRow
from jobd.wire.protocol import ErrorCode, RequestError
from jobd.worker.aftermath import ManualRunCancelled
from jobd.worker.queues import TargetQueue

if TYPE_CHECKING:  # the worker builds its handlers with itself
    from jobd.worker.worker import Worker

log = logging.getLogger("jobd.worker")

#: Characters of output, all jobs and both streams together, in a run-manual reply.
REPLY_OUTPUT_BUDGET = 192 * 1024  # at most 768 KiB of UTF-8


class WorkerHandlers:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.table: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self.ping,
            "poll": self.poll,
            "pause": self.pause,
            "continue": self.continue_,
            "status": self.status,
            "run-manual": self.run_manual,
            "add-target": self.add_target,
            "remove-target": self.remove_target,
            "set-target-concurrency": self.set_target_concurrency,
            "send-signal": self.send_signal,
        }

    # --- helpers ------------------------------------------------------------------

    def _served(self, targets: list[str] | None) -> list[str]:
        """The named targets (all when none are named); unknown names are an error."""
        if not targets:
            return list(self.worker.targets)
        unknown = [t for t in targets if t not in self.worker.targets]
        if unknown:
            raise self._not_served(", ".join(unknown))
        return targets

    def _target(self, name: str) -> TargetQueue:
        target = self.worker.targets.get(name)
        if target is None:
            raise self._not_served(name)
        return target

    def _not_served(self, names: str) -> RequestError:
        return RequestError(
            ErrorCode.NOT_FOUND, f"worker {self.worker.config.name} does not serve {names}"
        )

    # --- handlers -----------------------------------------------------------------

    def ping(self, data: dict[str, Any]) -> Any:
        return {"name": self.worker.config.name, "version": __version__}

    def poll(self, data: dict[str, Any]) -> Any:
        # Answered as it is read; the claim sends its query in the next turn of the loop.
        targets = self._served(data["targets"])
        self.worker.claimer.poll(targets, data["ids"])
        return {"targets": targets}

    async def pause(self, data: dict[str, Any]) -> Any:
        targets = self._served(data["targets"])
        for name in targets:
            self.worker.targets[name].paused = True
        log.info("paused %s", ", ".join(targets))
        return {"targets": targets}

    async def continue_(self, data: dict[str, Any]) -> Any:
        targets = self._served(data["targets"])
        for name in targets:
            self.worker.targets[name].paused = False
        log.info("continued %s", ", ".join(targets))
        self.worker.claimer.want(targets)  # pokes that came while paused were kept
        return {"targets": targets}

    async def status(self, data: dict[str, Any]) -> Any:
        worker = self.worker
        return {
            "name": worker.config.name,
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - worker.started, 3),
            "rss": rss_bytes(),
            "targets": {
                name: {**t.status(), "description": t.options.description}
                for name, t in worker.targets.items()
            },
            "running": sorted(worker.runner.running),
            "pending_writes": worker.writer.pending,
            "claimed": dict(worker.claimer.claimed),
            # Targets whose rows may wait for this worker: polled, not yet found dry.
            "wanted": sorted(worker.claimer.wanted),
            "reloads": worker.reloads.describe(),
            # This worker's instance in the workers table, and its fence.
            "instance": worker.heartbeat.describe(),
            # Writes that changed nothing: the rows were not this instance's any more.
            "fenced_writes": worker.fenced_writes.count,
            "rescues": worker.rescuer.describe() if worker.rescuer else None,
        }

    def _manual_refusal(self, row: ManualRow) -> str | None:
        name = self.worker.config.name
        if row.status != "manual":
            return f"status is {row.status}, not manual"
        if row.worker is not None:
            return f"job {row.id} is being run by worker {row.worker}"
        target = self.worker.targets.get(row.target)
        if target is None:
            return f"worker {name} does not serve target {row.target}"
        if row.slot not in target.slots:
            return f"worker {name} has no slot {row.slot} for target {row.target}"
        return None

    async def run_manual(self, data: dict[str, Any]) -> Any:
        worker = self.worker
        if worker.stopping:
            raise RequestError(ErrorCode.UNAVAILABLE, "the worker is shutting down")
        try:
            accepted, errors = await worker.store.accept_manual(data["ids"], self._manual_refusal)
        except StorageError as exc:
            raise RequestError(ErrorCode.UNAVAILABLE, f"database: {exc}") from None
        futures = worker.aftermath.expect_manual(row.id for row in accepted)
        await worker.release(worker.claimer.queue(row.job() for row in accepted))
        worker.claimer.wake()
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

    async def add_target(self, data: dict[str, Any]) -> Any:
        name = data["target"]
        if name in self.worker.targets:
            raise RequestError(ErrorCode.CONFLICT, f"target {name} is served already")
        target = TargetQueue.from_config(name, TargetConfig(slots=data["slots"]))
        self.worker.targets[name] = target
        log.info("added target %s %s", name, data["slots"])
        self.worker.targets_changed()
        self.worker.claimer.want([name])
        return {"target": name, "slots": target.concurrency()}

    async def remove_target(self, data: dict[str, Any]) -> Any:
        target = self._target(data["target"])
        del self.worker.targets[target.name]
        self.worker.claimer.forget(target.name)
        queued = target.drain()
        await self.worker.release(queued)
        log.info("removed target %s (%d queued jobs released)", target.name, len(queued))
        self.worker.targets_changed()
        return {"target": target.name, "released": len(queued), "running": target.running_count()}

    async def set_target_concurrency(self, data: dict[str, Any]) -> Any:
        target = self._target(data["target"])
        target.set_concurrency(data["slot"], data["concurrency"])
        log.info("target %s slot %s concurrency %d", target.name, data["slot"], data["concurrency"])
        self.worker.targets_changed()
        self.worker.claimer.want([target.name])
        return {"target": target.name, "slots": target.concurrency()}

    async def send_signal(self, data: dict[str, Any]) -> Any:
        sent: dict[int, str] = {}
        errors: dict[int, str] = {}
        for job_id, sig in data["jobs"].items():
            if self.worker.runner.send_signal(job_id, sig):
                sent[job_id] = signal.Signals(sig).name
            else:
                errors[job_id] = f"job {job_id} is not running on worker {self.worker.config.name}"
        return {"jobs": sent, "errors": errors}
