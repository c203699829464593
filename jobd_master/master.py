"""jobd-master: the registry of workers and the routing of requests to them.

Workers and clients talk to the master on one ROUTER socket.  Every request has one
small handler in jobd_master.handlers; requests to workers go back over the connection
each worker registered on (its ROUTER envelope), through the same jobd.wire.endpoint.

The master keeps no database connection for jobs: which worker runs a job is asked of
the workers themselves (see MasterHandlers.send_signal), so it holds no credentials
beyond the scheduler's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

from jobd.config import MasterConfig
from jobd.runtime.reload import ReloadCounts
from jobd.wire.endpoint import Endpoint, NoAnswer
from jobd.wire.protocol import RequestError
from jobd_master.handlers import MasterHandlers
from jobd_master.polls import PollFlow
from jobd_master.publisher import EventPublisher
from jobd_master.registry import QUICK_TIMEOUT, Registry, WorkerEntry

log = logging.getLogger("jobd_master")

#: A worker that misses this many pings in a row is dropped from the registry.
MISSED_PINGS = 3
#: Longest wait for a worker to acknowledge a poll before the next one may go out.
POLL_TIMEOUT = 1.0
#: Pokes for targets nobody serves are remembered up to this many targets.
MAX_REMEMBERED = 10_000


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
        self.registering = asyncio.Lock()
        self._pinging: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reloads = ReloadCounts()
        #: The scheduler and the rescuer of a master with a database (its daemon starts
        #: them; jobd.runtime.scheduler and jobd.runtime.rescuer).
        self.scheduler: Any = None
        self.rescuer: Any = None
        #: Pokes handled (from clients, the scheduler and the rescuer), and the polls
        #: sent by the flows of workers that are gone.
        self.pokes = 0
        self.retired_polls = 0
        self.handlers = MasterHandlers(self).table

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
            await self.drop(name, "the master is stopping", level=logging.DEBUG)

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

    def add(self, worker: WorkerEntry) -> None:
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

    async def drop(self, name: str, reason: str, level: int = logging.WARNING) -> None:
        worker = self.registry.drop(name)
        if worker is None:
            return
        log.log(level, "worker %s (%s) dropped: %s", name, worker.connection, reason)
        self.gone.pop(name).set()
        flow = self.polls.pop(name)
        self.retired_polls += flow.sent
        await flow.close()

    def polls_sent(self) -> int:
        """Polls sent to workers since the master started, those gone included."""
        return self.retired_polls + sum(flow.sent for flow in self.polls.values())

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

    def deliver_remembered(self, worker: WorkerEntry) -> None:
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
                await self.drop(worker.name, f"missed {MISSED_PINGS} pings")
        finally:
            self._pinging.discard(worker.name)

    # --- pokes ---------------------------------------------------------------------

    def poke(
        self, targets: list[str] | None, ids: Sequence[int] = ()
    ) -> tuple[dict[str, asyncio.Future[bool]], list[str]]:
        """Have the workers serving these targets (every target when None) poll, naming
        the rows `ids` that were just added to them; targets that no live worker serves
        are remembered.  Returns, per worker, a future that says when its poll went out,
        and the targets nobody serves.  Used by poke requests and by the scheduler."""
        self.pokes += 1
        if targets:
            by_worker, unserved = self.registry.split(targets)
            self._remember(unserved)
        else:  # every target of every worker
            by_worker = {w.name: list(w.targets) for w in self.registry if w.targets}
            unserved = []
        polls = {name: self.polls[name].poll(ts, ids) for name, ts in by_worker.items()}
        return polls, unserved
