"""The master's requests (jobd.wire.protocol.MASTER_REQUESTS): one small handler each.

Workers register over their connection and send their job events; clients poke, pause,
continue, ask for status, run manual jobs and signal running ones, which the master
routes to the workers serving the targets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from jobd import __version__
from jobd.runtime.process import rss_bytes
from jobd.wire.dispatch import request_envelope
from jobd.wire.endpoint import NoAnswer
from jobd.wire.protocol import ErrorCode, RequestError
from jobd_master.registry import QUICK_TIMEOUT, Envelope, WorkerEntry

if TYPE_CHECKING:  # the master builds its handlers with itself
    from jobd_master.master import Master

log = logging.getLogger("jobd_master")


class MasterHandlers:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.table: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self.ping,
            "register-worker": self.register_worker,
            "unregister-worker": self.unregister_worker,
            "poke": self.poke,
            "pause": self.pause,
            "continue": self.continue_,
            "status": self.status,
            "run-manual": self.run_manual,
            "send-signal": self.send_signal,
            "job-events": self.job_events,
        }

    # --- workers --------------------------------------------------------------------

    async def ping(self, data: dict[str, Any]) -> Any:
        # `events` tells clients where to subscribe (jobd.client waits with it).
        events = self.master.events.address if self.master.events else None
        return {"name": "jobd-master", "version": __version__, "events": events}

    async def register_worker(self, data: dict[str, Any]) -> Any:
        envelope = request_envelope.get()
        name = data["name"]
        async with self.master.registering:
            worker = self.master.registry.get(name)
            if worker is not None and worker.envelope == envelope:
                self.master.registry.update(
                    worker, data["targets"], data["version"], data["listen"], data["descriptions"]
                )
                log.info("worker %s registered again, targets %s", name, _names(worker.targets))
            else:
                if worker is not None:
                    await self._refuse_if_alive(worker, envelope, data)
                previous = self.master.registry.by_envelope(envelope)
                if previous is not None:  # same connection, new name: the old one is over
                    await self.master.drop(previous.name, f"its connection registered as {name}")
                worker = WorkerEntry(
                    name, envelope, data["targets"], data["version"], data["listen"],
                    descriptions=dict(data["descriptions"]),
                )  # fmt: skip
                self.master.add(worker)
                log.info(
                    "worker %s registered from %s (listen %s), targets %s",
                    name, worker.connection, worker.listen or "-", _names(worker.targets),
                )  # fmt: skip
            self.master.deliver_remembered(worker)
        return {"name": name, "ping_interval": self.master.ping_interval, "version": __version__}

    async def _refuse_if_alive(
        self, worker: WorkerEntry, envelope: Envelope, data: dict[str, Any]
    ) -> None:
        """A second connection claims a registered name: refuse it while the first one
        answers; a holder that no longer answers (crashed, restarted) is replaced."""
        newcomer = b"/".join(envelope).decode("utf-8", "replace")
        try:
            await self.master.ask(
                worker, "ping", timeout=min(self.master.ping_interval, QUICK_TIMEOUT)
            )
        except (NoAnswer, RequestError) as exc:
            await self.master.drop(
                worker.name, f"it does not answer ({exc}); {newcomer} takes the name"
            )
            return
        message = (
            f"worker name {worker.name!r} is already registered by a live worker"
            f" (listen {worker.listen or '-'}, connection {worker.connection});"
            f" refusing the registration from {newcomer} (listen {data['listen'] or '-'})"
        )
        log.error("%s", message)
        raise RequestError(ErrorCode.CONFLICT, message)

    async def unregister_worker(self, data: dict[str, Any]) -> Any:
        worker = self.master.registry.get(data["name"])
        if worker is None or worker.envelope != request_envelope.get():
            raise RequestError(
                ErrorCode.NOT_FOUND, f"worker {data['name']} is not registered on this connection"
            )
        await self.master.drop(worker.name, "it is stopping", level=logging.INFO)
        return {"name": worker.name}

    # --- clients --------------------------------------------------------------------

    def poke(self, data: dict[str, Any]) -> Any:
        """A plain handler (answered as read, see jobd.wire.dispatch): most polls go out
        at once, and then so does the reply, with no task and no turn of the event loop."""
        sent, unserved = self.master.poke(data["targets"], data["ids"])
        waiting = [f for f in sent.values() if not f.done()]
        if waiting:
            return self._poke_reply_once_sent(sent, unserved, waiting)
        return _poke_reply(sent, unserved)

    async def _poke_reply_once_sent(
        self,
        sent: dict[str, asyncio.Future[bool]],
        unserved: list[str],
        waiting: list[asyncio.Future[bool]],
    ) -> Any:
        # asyncio.wait, not gather: these futures are shared with other pokes and must
        # not be cancelled with this one.
        await asyncio.wait(waiting)
        return _poke_reply(sent, unserved)

    async def _fan_out(self, type_: str, targets: list[str] | None) -> Any:
        """Send pause/continue to the workers serving the targets (all when none)."""
        if targets:
            by_worker, unserved = self.master.registry.split(targets)
            if not by_worker:
                raise RequestError(
                    ErrorCode.NOT_FOUND, f"no live worker serves: {', '.join(unserved)}"
                )
            requests = {name: (type_, {"targets": ts}) for name, ts in by_worker.items()}
        else:
            unserved = []
            requests = {w.name: (type_, None) for w in self.master.registry}
        replies, errors = await self.master.ask_many(requests)
        return {"workers": replies, "errors": errors, "unserved": unserved}

    async def pause(self, data: dict[str, Any]) -> Any:
        return await self._fan_out("pause", data["targets"])

    async def continue_(self, data: dict[str, Any]) -> Any:
        return await self._fan_out("continue", data["targets"])

    async def status(self, data: dict[str, Any]) -> Any:
        workers = {w.name: w.describe() for w in self.master.registry}
        for name, flow in self.master.polls.items():
            workers[name]["polls_sent"] = flow.sent
        if data["poll_workers"]:
            replies, errors = await self.master.ask_many(
                {name: ("status", None) for name in workers}
            )
            for name, reply in replies.items():
                workers[name]["status"] = reply
            for name, error in errors.items():
                workers[name]["error"] = error
        return {
            "name": "jobd-master",
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.master.started, 3),
            "rss": rss_bytes(),
            "listen": self.master.config.listen,
            "ping_interval": self.master.ping_interval,
            "events": self.master.events.describe() if self.master.events else None,
            "schedules": self._schedules(),
            "workers": workers,
            "remembered": sorted(self.master.remembered),
            "reloads": self.master.reloads.describe(),
            "rescues": self.master.rescuer.describe() if self.master.rescuer else None,
        }

    def _schedules(self) -> str | None:
        """Where the scheduler of this master reads its schedules (None: it has none)."""
        database = self.master.config.database
        return f"{database.redacted()} {self.master.config.table}_schedules" if database else None

    async def run_manual(self, data: dict[str, Any]) -> Any:
        plan: dict[str, list[int]] = {}
        errors: dict[int, str] = {}
        for job in data["jobs"]:
            job_id, target = job["id"], job["target"]
            if job_id in errors or any(job_id in ids for ids in plan.values()):
                continue  # listed twice
            workers = self.master.registry.serving(target)
            if not workers:
                errors[job_id] = f"no live worker serves target {target}"
                continue
            # Spread the jobs over the target's workers: manual runs obey slot concurrency.
            chosen = min(workers, key=lambda w: (len(plan.get(w.name, ())), w.name))
            plan.setdefault(chosen.name, []).append(job_id)
        log.info("run-manual: %s", {name: ids for name, ids in plan.items()})
        # No timeout: the reply comes when the jobs have finished.  A worker that leaves
        # the registry meanwhile ends its wait (see ask).
        replies, failures = await self.master.ask_many(
            {name: ("run-manual", {"ids": ids}) for name, ids in plan.items()}, timeout=None
        )
        jobs: dict[int, Any] = {}
        for name, reply in replies.items():
            for job_id, result in reply.get("jobs", {}).items():
                jobs[int(job_id)] = {**result, "worker": name}
            for job_id, message in reply.get("errors", {}).items():
                errors[int(job_id)] = f"{name}: {message}"
        for name, message in failures.items():
            for job_id in plan[name]:
                errors[job_id] = f"{name}: {message}"
        return {"jobs": jobs, "errors": errors}

    async def send_signal(self, data: dict[str, Any]) -> Any:
        """Ask the workers serving each job's target; a job none of them runs is then
        asked of every other live worker (its target may have been removed from the
        worker running it).  A job runs on one worker at most, so nothing is signalled
        twice, and the master needs no database to find it."""
        signals = {job["id"]: job["signal"].name for job in data["jobs"]}
        targets = {job["id"]: job["target"] for job in data["jobs"]}
        sent: dict[int, Any] = {}
        notes: dict[int, list[str]] = {job_id: [] for job_id in signals}
        asked: dict[int, set[str]] = {job_id: set() for job_id in signals}

        async def round_(choose: Callable[[int], Iterable[WorkerEntry]]) -> None:
            requests: dict[str, dict[int, str]] = {}
            for job_id, sig in signals.items():
                if job_id in sent:
                    continue
                for worker in choose(job_id):
                    if worker.name not in asked[job_id]:
                        asked[job_id].add(worker.name)
                        requests.setdefault(worker.name, {})[job_id] = sig
            replies, failures = await self.master.ask_many(
                {name: ("send-signal", {"jobs": jobs}) for name, jobs in requests.items()}
            )
            for name, reply in replies.items():
                for job_id, sig in reply.get("jobs", {}).items():
                    sent[int(job_id)] = {"signal": sig, "worker": name}
            for name, message in failures.items():
                for job_id in requests[name]:
                    notes[job_id].append(f"{name}: {message}")

        await round_(lambda job_id: self.master.registry.serving(targets[job_id]))
        await round_(lambda job_id: self.master.registry)
        errors: dict[int, str] = {}
        for job_id in signals:
            if job_id not in sent:
                where = ", ".join(sorted(asked[job_id])) or "no live worker"
                detail = "; ".join(notes[job_id])
                errors[job_id] = f"job {job_id} is not running on any live worker (asked {where})"
                if detail:
                    errors[job_id] += f"; {detail}"
        for job_id, result in sent.items():
            log.info("sent %s to job %d on %s", result["signal"], job_id, result["worker"])
        return {"jobs": sent, "errors": errors}

    async def job_events(self, data: dict[str, Any]) -> Any:
        """Publish a worker's job events.  Only a registered worker's connection may send
        them, and each event carries that worker's registered name."""
        worker = self.master.registry.by_envelope(request_envelope.get())
        if worker is None:
            raise RequestError(
                ErrorCode.NOT_FOUND, "job events are taken from registered workers only"
            )
        events = data["events"]
        for event in events:
            event["worker"] = worker.name
        if self.master.events is not None:
            self.master.events.publish(events)
        return {"events": len(events)}


def _names(targets: Mapping[str, Any]) -> str:
    return ", ".join(targets) or "none"


def _poke_reply(sent: dict[str, asyncio.Future[bool]], unserved: list[str]) -> dict[str, Any]:
    return {
        "workers": sorted(n for n, f in sent.items() if f.result()),
        "errors": {n: "poll not sent" for n, f in sent.items() if not f.result()},
        "remembered": unserved,
    }
