"""jobd-master: the registry of workers and the routing of requests to them.

Workers and clients talk to the master on one ROUTER socket.  Every request has one
small handler in `Master.handlers`; requests to workers go back over the connection
each worker registered on (its ROUTER envelope), through the same `rpc.Endpoint`.

The master keeps no database connection: which worker runs a job is asked of the
workers themselves (see `handle_send_signal`), so the master holds no credentials.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from jobd import __version__
from jobd.config import MasterConfig
from jobd.protocol import ErrorCode, RequestError
from jobd.rpc import Endpoint, NoAnswer, request_envelope
from jobd.service import rss_bytes
from jobd_master.events import EventPublisher
from jobd_master.polls import PollFlow
from jobd_master.registry import Envelope, Registry, WorkerEntry

log = logging.getLogger("jobd_master")

#: A worker that misses this many pings in a row is dropped from the registry.
MISSED_PINGS = 3
#: Longest wait for a worker's answer to a quick request (status, pause, signals, ...).
QUICK_TIMEOUT = 2.0
#: Longest wait for a worker to acknowledge a poll before the next one may go out.
POLL_TIMEOUT = 1.0
#: Pokes for targets nobody serves are remembered up to this many targets.
MAX_REMEMBERED = 10_000

Handler = Callable[[dict[str, Any]], Any]  # a coroutine function, or plain (rpc.Dispatcher)


class Master:
    def __init__(self, config: MasterConfig, events: EventPublisher | None = None) -> None:
        self.config = config
        #: Where job events are published (None: the master publishes none).
        self.events = events
        self.started = time.monotonic()
        self.registry = Registry()
        self.polls: dict[str, PollFlow] = {}
        #: Set when a worker's registration ends, so requests routed to it stop waiting.
        self.gone: dict[str, asyncio.Event] = {}
        #: Poked targets that no live worker served at the time.
        self.remembered: set[str] = set()
        self.endpoint: Endpoint | None = None
        self._registering = asyncio.Lock()
        self._pinging: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.handlers: dict[str, Handler] = {
            "ping": self.handle_ping,
            "register-worker": self.handle_register_worker,
            "unregister-worker": self.handle_unregister_worker,
            "poke": self.handle_poke,
            "pause": self.handle_pause,
            "continue": self.handle_continue,
            "status": self.handle_status,
            "run-manual": self.handle_run_manual,
            "send-signal": self.handle_send_signal,
            "job-events": self.handle_job_events,
        }

    @property
    def ping_interval(self) -> float:
        return self.config.ping_interval

    # --- life cycle ---------------------------------------------------------------

    def start(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._spawn(self._ping_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for name in list(self.polls):
            await self._drop(name, "the master is stopping", level=logging.DEBUG)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- talking to workers -------------------------------------------------------

    async def ask(
        self, worker: WorkerEntry, type_: str, data: Mapping[str, Any] | None = None,
        timeout: float | None = QUICK_TIMEOUT,
    ) -> Any:  # fmt: skip
        """One request to a worker over its registered connection.

        Raises RequestError for its error reply and NoAnswer on timeout or when the worker
        leaves the registry meanwhile (a run-manual may otherwise wait for ever)."""
        assert self.endpoint is not None
        gone = self.gone.get(worker.name)
        if gone is None or self.registry.get(worker.name) is not worker:
            raise NoAnswer(f"worker {worker.name} is no longer registered")
        request = asyncio.ensure_future(
            self.endpoint.request(type_, data, envelope=worker.envelope, timeout=timeout)
        )
        waiting_for_gone = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait([request, waiting_for_gone], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            request.cancel()
            raise
        finally:
            waiting_for_gone.cancel()
        if not request.done():
            request.cancel()
            raise NoAnswer(f"worker {worker.name} left the registry")
        result = request.result()  # raises the request's own error
        worker.seen()
        return result

    async def ask_many(
        self, requests: Mapping[str, tuple[str, Mapping[str, Any] | None]],
        timeout: float | None = QUICK_TIMEOUT,
    ) -> tuple[dict[str, Any], dict[str, str]]:  # fmt: skip
        """{worker name: (type, data)} in parallel -> ({name: reply data}, {name: error})."""
        names = list(requests)

        async def one(name: str) -> Any:
            worker = self.registry.get(name)
            if worker is None:
                raise NoAnswer(f"worker {name} is no longer registered")
            type_, data = requests[name]
            return await self.ask(worker, type_, data, timeout)

        outcomes = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
        replies: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, RequestError):
                errors[name] = f"{outcome.code}: {outcome.message}"
            elif isinstance(outcome, NoAnswer):
                errors[name] = f"no answer: {outcome}"
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                replies[name] = outcome
        return replies, errors

    # --- registry -----------------------------------------------------------------

    def _add(self, worker: WorkerEntry) -> None:
        self.registry.add(worker)
        self.gone[worker.name] = asyncio.Event()

        def poll(targets: list[str], ids: Sequence[int]) -> asyncio.Future[Any]:
            # Handed to the socket before this returns: PollFlow counts it sent from here.
            # Targets the worker dropped since the poke are left out: it would refuse them.
            assert self.endpoint is not None
            served = [t for t in targets if t in worker.targets] or targets
            data: dict[str, Any] = {"targets": served}
            if ids and worker.takes_named_polls():
                data["ids"] = list(ids)
            return self.endpoint.send_request(
                "poll", data, envelope=worker.envelope, timeout=POLL_TIMEOUT
            )

        self.polls[worker.name] = PollFlow(worker.name, poll, self._poll_failed)

    async def _drop(self, name: str, reason: str, level: int = logging.WARNING) -> None:
        worker = self.registry.drop(name)
        if worker is None:
            return
        log.log(level, "worker %s (%s) dropped: %s", name, worker.connection, reason)
        self.gone.pop(name).set()
        await self.polls.pop(name).close()

    def _poll_failed(self, targets: list[str], exc: Exception) -> None:
        # Keep the poke: it is delivered to the next worker that registers with these
        # targets (this one, when it comes back).  An extra poll costs a worker nothing.
        log.warning("poll of %s failed: %s", ", ".join(targets), exc)
        self._remember(targets)

    def _remember(self, targets: Iterable[str]) -> None:
        for target in targets:
            if len(self.remembered) >= MAX_REMEMBERED:
                log.warning("too many remembered pokes; forgetting the poke of %s", target)
                continue
            self.remembered.add(target)

    def _deliver_remembered(self, worker: WorkerEntry) -> None:
        hits = sorted(self.remembered.intersection(worker.targets))
        if hits:
            self.remembered.difference_update(hits)
            log.info("delivering remembered pokes of %s to %s", ", ".join(hits), worker.name)
            self.polls[worker.name].poll(hits)

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            for worker in list(self.registry):
                if worker.name not in self._pinging:
                    self._spawn(self._ping(worker))

    async def _ping(self, worker: WorkerEntry) -> None:
        self._pinging.add(worker.name)
        try:
            # Answered (or not) before the next round, so each round counts one miss.
            await self.ask(worker, "ping", timeout=self.ping_interval * 0.9)
        except (NoAnswer, RequestError) as exc:
            if self.registry.get(worker.name) is not worker:
                return
            worker.missed_pings += 1
            log.info("worker %s missed ping %d: %s", worker.name, worker.missed_pings, exc)
            if worker.missed_pings >= MISSED_PINGS:
                await self._drop(worker.name, f"missed {MISSED_PINGS} pings")
        finally:
            self._pinging.discard(worker.name)

    # --- handlers: workers --------------------------------------------------------

    async def handle_ping(self, data: dict[str, Any]) -> Any:
        # `events` tells clients where to subscribe (jobd.client waits with it).
        events = self.events.address if self.events else None
        return {"name": "jobd-master", "version": __version__, "events": events}

    async def handle_register_worker(self, data: dict[str, Any]) -> Any:
        envelope = request_envelope.get()
        name = data["name"]
        async with self._registering:
            worker = self.registry.get(name)
            if worker is not None and worker.envelope == envelope:
                self.registry.update(
                    worker, data["targets"], data["version"], data["listen"], data["descriptions"]
                )
                log.info("worker %s registered again, targets %s", name, _names(worker.targets))
            else:
                if worker is not None:
                    await self._refuse_if_alive(worker, envelope, data)
                previous = self.registry.by_envelope(envelope)
                if previous is not None:  # same connection, new name: the old one is over
                    await self._drop(previous.name, f"its connection registered as {name}")
                worker = WorkerEntry(
                    name, envelope, data["targets"], data["version"], data["listen"],
                    descriptions=dict(data["descriptions"]),
                )  # fmt: skip
                self._add(worker)
                log.info(
                    "worker %s registered from %s (listen %s), targets %s",
                    name, worker.connection, worker.listen or "-", _names(worker.targets),
                )  # fmt: skip
            self._deliver_remembered(worker)
        return {"name": name, "ping_interval": self.ping_interval, "version": __version__}

    async def _refuse_if_alive(
        self, worker: WorkerEntry, envelope: Envelope, data: dict[str, Any]
    ) -> None:
        """A second connection claims a registered name: refuse it while the first one
        answers; a holder that no longer answers (crashed, restarted) is replaced."""
        newcomer = b"/".join(envelope).decode("utf-8", "replace")
        try:
            await self.ask(worker, "ping", timeout=min(self.ping_interval, QUICK_TIMEOUT))
        except (NoAnswer, RequestError) as exc:
            await self._drop(worker.name, f"it does not answer ({exc}); {newcomer} takes the name")
            return
        message = (
            f"worker name {worker.name!r} is already registered by a live worker"
            f" (listen {worker.listen or '-'}, connection {worker.connection});"
            f" refusing the registration from {newcomer} (listen {data['listen'] or '-'})"
        )
        log.error("%s", message)
        raise RequestError(ErrorCode.CONFLICT, message)

    async def handle_unregister_worker(self, data: dict[str, Any]) -> Any:
        worker = self.registry.get(data["name"])
        if worker is None or worker.envelope != request_envelope.get():
            raise RequestError(
                ErrorCode.NOT_FOUND, f"worker {data['name']} is not registered on this connection"
            )
        await self._drop(worker.name, "it is stopping", level=logging.INFO)
        return {"name": worker.name}

    # --- handlers: clients --------------------------------------------------------

    def poke(
        self, targets: list[str] | None, ids: Sequence[int] = ()
    ) -> tuple[dict[str, asyncio.Future[bool]], list[str]]:
        """Have the workers serving these targets (every target when None) poll, naming
        the rows `ids` that were just added to them; targets that no live worker serves
        are remembered.  Returns, per worker, a future that says when its poll went out,
        and the targets nobody serves.  Used by poke requests and by the scheduler."""
        if targets:
            by_worker, unserved = self.registry.split(targets)
            self._remember(unserved)
        else:  # every target of every worker
            by_worker = {w.name: list(w.targets) for w in self.registry if w.targets}
            unserved = []
        polls = {name: self.polls[name].poll(ts, ids) for name, ts in by_worker.items()}
        return polls, unserved

    def handle_poke(self, data: dict[str, Any]) -> Any:
        """A plain handler (answered as read, see rpc.Dispatcher.start): most polls go out
        at once, and then so does the reply, with no task and no turn of the event loop."""
        sent, unserved = self.poke(data["targets"], data["ids"])
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
            by_worker, unserved = self.registry.split(targets)
            if not by_worker:
                raise RequestError(
                    ErrorCode.NOT_FOUND, f"no live worker serves: {', '.join(unserved)}"
                )
            requests = {name: (type_, {"targets": ts}) for name, ts in by_worker.items()}
        else:
            unserved = []
            requests = {w.name: (type_, None) for w in self.registry}
        replies, errors = await self.ask_many(requests)
        return {"workers": replies, "errors": errors, "unserved": unserved}

    async def handle_pause(self, data: dict[str, Any]) -> Any:
        return await self._fan_out("pause", data["targets"])

    async def handle_continue(self, data: dict[str, Any]) -> Any:
        return await self._fan_out("continue", data["targets"])

    async def handle_status(self, data: dict[str, Any]) -> Any:
        workers = {w.name: w.describe() for w in self.registry}
        for name, flow in self.polls.items():
            workers[name]["polls_sent"] = flow.sent
        if data["poll_workers"]:
            replies, errors = await self.ask_many({name: ("status", None) for name in workers})
            for name, reply in replies.items():
                workers[name]["status"] = reply
            for name, error in errors.items():
                workers[name]["error"] = error
        return {
            "name": "jobd-master",
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started, 3),
            "rss": rss_bytes(),
            "listen": self.config.listen,
            "ping_interval": self.ping_interval,
            "events": self.events.describe() if self.events else None,
            "schedules": self._schedules(),
            "workers": workers,
            "remembered": sorted(self.remembered),
        }

    def _schedules(self) -> str | None:
        """Where the scheduler of this master reads its schedules (None: it has none)."""
        database = self.config.database
        return f"{database.redacted()} {self.config.table}_schedules" if database else None

    async def handle_run_manual(self, data: dict[str, Any]) -> Any:
        plan: dict[str, list[int]] = {}
        errors: dict[int, str] = {}
        for job in data["jobs"]:
            job_id, target = job["id"], job["target"]
            if job_id in errors or any(job_id in ids for ids in plan.values()):
                continue  # listed twice
            workers = self.registry.serving(target)
            if not workers:
                errors[job_id] = f"no live worker serves target {target}"
                continue
            # Spread the jobs over the target's workers: manual runs obey slot concurrency.
            chosen = min(workers, key=lambda w: (len(plan.get(w.name, ())), w.name))
            plan.setdefault(chosen.name, []).append(job_id)
        log.info("run-manual: %s", {name: ids for name, ids in plan.items()})
        # No timeout: the reply comes when the jobs have finished.  A worker that leaves
        # the registry meanwhile ends its wait (see ask).
        replies, failures = await self.ask_many(
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

    async def handle_send_signal(self, data: dict[str, Any]) -> Any:
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
            replies, failures = await self.ask_many(
                {name: ("send-signal", {"jobs": jobs}) for name, jobs in requests.items()}
            )
            for name, reply in replies.items():
                for job_id, sig in reply.get("jobs", {}).items():
                    sent[int(job_id)] = {"signal": sig, "worker": name}
            for name, message in failures.items():
                for job_id in requests[name]:
                    notes[job_id].append(f"{name}: {message}")

        await round_(lambda job_id: self.registry.serving(targets[job_id]))
        await round_(lambda job_id: self.registry)
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

    async def handle_job_events(self, data: dict[str, Any]) -> Any:
        """Publish a worker's job events.  Only a registered worker's connection may send
        them, and each event carries that worker's registered name."""
        worker = self.registry.by_envelope(request_envelope.get())
        if worker is None:
            raise RequestError(
                ErrorCode.NOT_FOUND, "job events are taken from registered workers only"
            )
        events = data["events"]
        for event in events:
            event["worker"] = worker.name
        if self.events is not None:
            self.events.publish(events)
        return {"events": len(events)}


def _names(targets: Mapping[str, Any]) -> str:
    return ", ".join(targets) or "none"


def _poke_reply(sent: dict[str, asyncio.Future[bool]], unserved: list[str]) -> dict[str, Any]:
    return {
        "workers": sorted(n for n, f in sent.items() if f.result()),
        "errors": {n: "poll not sent" for n, f in sent.items() if not f.result()},
        "remembered": unserved,
    }
