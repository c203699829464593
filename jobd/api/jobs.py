"""The Python job API: submit jobs, wait for their outcome, look at them, and manage
recurring schedules (jobd.api.schedules).  Import it from `jobd.client`:

    from jobd.client import Jobd

    with Jobd("mysql://jobd:secret@127.0.0.1:3306/jobd") as jobd:
        job_id = jobd.submit("mail", data={"to": "ann@example.org"})
        print(jobd.wait(job_id, timeout=60))   # {"result": "ok", "code": 0, ...}

`AsyncJobd` is the asyncio original, `Jobd` its blocking twin for scripts (each call
runs on the twin's own event loop; inside a running event loop use `AsyncJobd`).

Jobs are rows: `submit` inserts one (through jobd.store.catalog, like any INSERT would)
and then pokes jobd-master, which has the workers serving the target poll; with
`worker=` instead of a master, it asks that worker to poll.  `wait` listens to the
master's job events and reads the row for the outcome (see jobd.api.waiting).

An outcome is a dict: a run-manual reply's fields (jobd.jobs.Outcome.as_reply: result,
code, signal, stdout, stderr, duration in whole seconds) with id, status, worker and
attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any

import zmq.asyncio

from jobd.api import arguments
from jobd.api.instances import InstanceMethods
from jobd.api.replies import reachable, targets_from_status
from jobd.api.schedules import ScheduleMethods
from jobd.api.waiting import JobNotFound, WaitTimeout, wait_for_jobs
from jobd.config import DatabaseURL
from jobd.store.catalog import JobCatalog, TargetQueue, TargetStats, outcome_of
from jobd.store.columns import FINISHED, STATUSES
from jobd.store.search import JobPage
from jobd.wire.client import Client
from jobd.wire.curve import ClientCurve
from jobd.wire.endpoint import NoAnswer
from jobd.wire.protocol import MASTER_REQUESTS, WORKER_REQUESTS, ErrorCode, RequestError
from jobd.wire.subscription import Subscription

__all__ = ["AsyncJobd", "JobNotFound", "TargetStats", "WaitTimeout"]

DEFAULT_MASTER = "tcp://127.0.0.1:7081"
#: Longest wait for the master's events endpoint to answer before `wait` polls rows.
EVENTS_CONNECT = 1.0

log = logging.getLogger("jobd.client")


class AsyncJobd(ScheduleMethods, InstanceMethods):
    """Jobs and schedules of one jobs table.

        async with AsyncJobd("mysql://jobd:secret@127.0.0.1:3306/jobd") as jobd:
            job_id = await jobd.submit("mail", data={"to": "ann@example.org"})
            outcome = await jobd.wait(job_id)

    `database`: the URL (or a DatabaseURL) of the database holding `table`.
    `master`: jobd-master's address (default tcp://127.0.0.1:7081), for pokes, manual
    runs and job events.  `worker`: talk to this worker instead (no events: `wait`
    reads the row every second).  `events`: the master's events endpoint, if not the
    one its `ping` reply names.  `timeout`: seconds to wait for a daemon's answer.
    `curve`: for daemons with CURVE keys, this client's key pair and the daemon's public
    key (jobd.client.ClientCurve.load; the master's key serves its events too).
    """

    def __init__(
        self,
        database: str | DatabaseURL,
        *,
        table: str = "jobs",
        master: str | None = None,
        worker: str | None = None,
        events: str | None = None,
        timeout: float = 5.0,
        curve: ClientCurve | None = None,
    ) -> None:
        if master is not None and worker is not None:
            raise ValueError("give master or worker, not both")
        url = database if isinstance(database, DatabaseURL) else DatabaseURL.parse(database)
        self.table = table
        self.worker = worker
        self.master = None if worker is not None else (master or DEFAULT_MASTER)
        self.events = events
        self.timeout = timeout
        self.curve = curve
        self.catalog = JobCatalog(url, table, pool_size=2)
        self._schedules = None
        self._instances = None
        self._daemon: Client | None = None
        self._zmq: zmq.asyncio.Context | None = None

    # --- connections --------------------------------------------------------------

    async def connect(self) -> None:
        """Open the database pool (raises jobd.store.pool.StorageError); daemons are reached on
        first use."""
        await self.catalog.connect()

    async def close(self) -> None:
        await self.catalog.close()
        await self._close_schedules()
        await self._close_instances()
        if self._daemon is not None:
            await self._daemon.close()
            self._daemon = None
        if self._zmq is not None:
            self._zmq.term()
            self._zmq = None

    async def __aenter__(self) -> AsyncJobd:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.close()

    async def request(
        self, type_: str, data: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """One request to the daemon (the master, or the worker); raises RequestError and
        NoAnswer."""
        if self._daemon is None:
            address = self.worker or self.master
            assert address is not None
            table = WORKER_REQUESTS if self.worker else MASTER_REQUESTS
            client = Client(address, self.timeout, table, self.curve)
            self._daemon = await client.__aenter__()
        return await self._daemon.request(type_, data, timeout)

    # --- jobs ---------------------------------------------------------------------

    async def submit(
        self,
        target: str,
        *,
        slot: str | None = None,
        priority: int = 0,
        at: float | None = None,
        delay: float | None = None,
        data: Any = None,
        manual: bool = False,
        callback_url: str | None = None,
    ) -> int:
        """Add a job and have its workers poll; returns its id.

        `at` (UNIX time) or `delay` (seconds): not before then.  `data`: anything
        json.dumps takes; the launcher reads it on stdin.  `manual`: the job runs only
        when asked for with run_manual.  `callback_url`: POSTed the outcome.  A poke that
        gets no answer is logged, not raised: the workers find the job at their next
        poll.  Raises ValueError for a bad argument."""
        arguments.check_target_and_slot(target, slot)
        arguments.check_priority(priority)
        run_at = arguments.run_at_of(at, delay)
        arguments.check_callback_url(callback_url)
        job_id = await self.catalog.insert(
            target, slot=slot, priority=priority, run_at=run_at,
            data=arguments.data_text(data), callback_url=callback_url, manual=manual,
        )  # fmt: skip
        if not manual:
            # A delayed job is poked too: the worker then sets its timer for it.
            try:
                await self.poke([target], [job_id])
            except (NoAnswer, RequestError) as exc:
                log.warning(
                    "job %d added; the poke failed (%s): workers find it at their next poll",
                    job_id, exc,
                )  # fmt: skip
        return job_id

    async def poke(self, targets: Sequence[str] | None = None, ids: Sequence[int] = ()) -> Any:
        """Have the workers serving `targets` (all when None) poll: `poke` through the
        master, `poll` to the worker.  `ids`: rows just added to those targets, which an
        idle worker then claims by id (the fastest start).  Returns the daemon's reply."""
        type_ = "poll" if self.worker else "poke"
        data: dict[str, Any] = {"targets": list(targets) if targets else None}
        if not ids:
            return await self.request(type_, data)
        try:
            return await self.request(type_, {**data, "ids": list(ids)})
        except RequestError as exc:
            if exc.code != ErrorCode.BAD_REQUEST:
                raise
            # A daemon older than jobd 0.2 refuses `ids`: the same poke without them.
            return await self.request(type_, data)

    async def job(self, job_id: int) -> dict[str, Any] | None:
        """Every column of the row, or None."""
        return (await self.catalog.jobs([job_id])).get(job_id)

    async def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        """Rows, newest first, without output and data: `jobs_page(...).rows`."""
        return (await self.jobs_page(**filters)).rows

    async def jobs_page(
        self,
        *,
        status: str | None = None,
        target: str | None = None,
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> JobPage:
        """A page of rows, newest first, without output and data: ids below `before`,
        created in [`since`, `until`) (UNIX times), with `text` in the data or output.
        A search by time or text reads SEARCH_WINDOW ids at most; `next_before` of the
        page is where the next one starts."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status: expected one of {', '.join(STATUSES)}")
        return await self.catalog.search(
            limit, status=status, target=target, text=text, before=before,
            since=None if since is None else int(since),
            until=None if until is None else int(until),
        )  # fmt: skip

    async def result(self, job_id: int) -> dict[str, Any] | None:
        """The outcome of a finished job, None while it is not finished.

        The outcome: {"id", "status" ("done" or "ignored"), "result" ("ok"/"fail"),
        "code", "signal", "stdout", "stderr", "duration" (whole seconds), "worker",
        "attempts"}.  Raises JobNotFound."""
        row = await self.job(job_id)
        if row is None:
            raise JobNotFound([job_id])
        return outcome_of(row) if row["status"] in FINISHED else None

    async def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """The outcome of a job (see `result`) once it has finished.  Raises JobNotFound,
        and WaitTimeout after `timeout` seconds."""
        return (await self.wait_many([job_id], timeout))[job_id]

    async def wait_many(
        self,
        ids: Collection[int],
        timeout: float | None = None,
        on_finished: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[int, dict[str, Any]]:
        """{id: outcome} once all of `ids` have finished; `on_finished` is called with
        each outcome as it comes.  Raises JobNotFound and WaitTimeout (its `done` has
        the outcomes so far)."""
        ids = list(dict.fromkeys(ids))
        subscription = await self._subscribe(ids)
        try:
            return await wait_for_jobs(self.catalog, ids, subscription, timeout, on_finished)
        finally:
            if subscription is not None:
                subscription.close()

    async def _subscribe(self, ids: Collection[int]) -> Subscription | None:
        """A subscription to the jobs' events, or None when no events endpoint answers
        within EVENTS_CONNECT seconds."""
        address = await self.events_address()
        if address is None:
            return None
        if self._zmq is None:
            self._zmq = zmq.asyncio.Context()
        subscription = Subscription(self._zmq, address, ids, self.curve)
        if await subscription.wait_connected(min(EVENTS_CONNECT, self.timeout)):
            return subscription
        log.info("no answer from the events endpoint %s: reading rows every second", address)
        subscription.close()
        return None

    async def events_address(self) -> str | None:
        """Where the master publishes job events: `events=`, else what its ping reply
        names (with the master's host for a wildcard bind such as tcp://*:7082)."""
        if self.events is not None:
            return self.events
        if self.master is None:
            return None
        try:
            reply = await self.request("ping", timeout=min(EVENTS_CONNECT, self.timeout))
        except (NoAnswer, RequestError):
            return None
        address = reply.get("events") if isinstance(reply, dict) else None
        if not isinstance(address, str) or not address:
            return None
        self.events = reachable(address, self.master)
        return self.events

    async def run_manual(
        self, ids: Sequence[int], timeout: float | None = None
    ) -> dict[str, dict[int, Any]]:
        """Run rows in status 'manual' now; returns {"jobs": {id: outcome}, "errors": {id:
        message}} once all have finished (or `timeout` seconds passed: NoAnswer).  Through
        the master, each job's target (which routes it) is read from its row."""
        ids = list(dict.fromkeys(ids))
        await self.request("ping")  # a daemon that is away is told within self.timeout
        if self.worker:
            return await self.request("run-manual", {"ids": ids}, timeout)
        rows = await self.catalog.jobs(ids)
        errors: dict[int, Any] = {i: f"job {i} not found" for i in ids if i not in rows}
        routed = [{"id": i, "target": rows[i]["target"]} for i in ids if i in rows]
        reply: dict[str, Any] = {"jobs": {}, "errors": {}}
        if routed:
            reply = await self.request("run-manual", {"jobs": routed}, timeout)
        return {"jobs": reply["jobs"], "errors": {**errors, **reply["errors"]}}

    async def targets(self) -> dict[str, dict[str, Any]]:
        """{target: {"description", "workers": {worker: {slot: concurrency}}}} of the live
        workers (through the master), or of the worker."""
        if self.worker:
            return targets_from_status(await self.request("status"), from_worker=True)
        status = await self.request("status", {"poll_workers": False})
        return targets_from_status(status, from_worker=False)

    async def queue(self) -> list[TargetQueue]:
        """Every target with rows waiting or held by workers, or failed in the last five
        minutes: the counts, and when its oldest waiting row was created."""
        return await self.catalog.queue()

    async def stats(self, *, target: str | None = None, since: float = 0) -> list[TargetStats]:
        """Per target, over the rows finished at or after `since` (UNIX time): runs, ok,
        failed, ignored, retried and the duration's mean, p50 and p95 (whole seconds)."""
        return await self.catalog.stats(target=target, since=int(since))

    async def purge(
        self, older_than: float, *, statuses: Sequence[str] = FINISHED, dry_run: bool = False
    ) -> int:
        """Delete done/ignored rows finished more than `older_than` seconds ago, in
        batches of 1,000; returns how many (with `dry_run`, how many would go)."""
        return await self.catalog.purge(older_than, statuses, dry_run)
