"""The Python job API: submit jobs, wait for their outcome, look at them, and manage
recurring schedules.  Import it from `jobd.client`:

    from jobd.client import Jobd

    with Jobd("mysql://jobd:secret@127.0.0.1:3306/jobd") as jobd:
        job_id = jobd.submit("mail", data={"to": "ann@example.org"})
        print(jobd.wait(job_id, timeout=60))   # {"result": "ok", "code": 0, ...}

`AsyncJobd` is the asyncio original, `Jobd` its blocking twin for scripts (each call
runs on the twin's own event loop; inside a running event loop use `AsyncJobd`).

Jobs are rows: `submit` inserts one (through `jobd.catalog`, like any INSERT would)
and then pokes jobd-master, which has the workers serving the target poll; with
`worker=` instead of a master, it asks that worker to poll.  `wait` listens to the
master's job events and reads the row for the outcome (see jobd.waiting).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import zmq.asyncio

from jobd import protocol
from jobd.catalog import FINISHED, STATUSES, JobCatalog, TargetStats, outcome
from jobd.config import URL_PATTERN, DatabaseURL
from jobd.cron import Rule
from jobd.events import Subscription
from jobd.protocol import MASTER_REQUESTS, WORKER_REQUESTS, ErrorCode, RequestError
from jobd.rpc import NoAnswer
from jobd.schedules import Schedule, ScheduleStore
from jobd.waiting import JobNotFound, Outcome, WaitTimeout, wait_for_jobs

if TYPE_CHECKING:
    from jobd.client import Client
    from jobd.curve import ClientCurve

__all__ = ["AsyncJobd", "JobNotFound", "Jobd", "Outcome", "TargetStats", "WaitTimeout"]

DEFAULT_MASTER = "tcp://127.0.0.1:7081"
#: Longest wait for the master's events endpoint to answer before `wait` polls rows.
EVENTS_CONNECT = 1.0
#: Hosts of a bind address that mean "every interface": a client uses the master's host.
_WILDCARDS = ("*", "0.0.0.0", "::", "")
PRIORITY_RANGE = range(-32768, 32768)  # the column is a smallint

log = logging.getLogger("jobd.client")
T = TypeVar("T")


class AsyncJobd:
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
        self._schedules: ScheduleStore | None = None
        self._daemon: Client | None = None
        self._zmq: zmq.asyncio.Context | None = None

    # --- connections --------------------------------------------------------------

    async def connect(self) -> None:
        """Open the database pool (raises jobd.db.StorageError); daemons are reached on
        first use."""
        await self.catalog.connect()

    async def close(self) -> None:
        await self.catalog.close()
        if self._schedules is not None:
            await self._schedules.close()
            self._schedules = None
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
            from jobd.client import Client  # jobd.client imports this module

            address = self.worker or self.master
            assert address is not None
            table = WORKER_REQUESTS if self.worker else MASTER_REQUESTS
            client = Client(address, self.timeout, table, self.curve)
            self._daemon = await client.__aenter__()
        return await self._daemon.request(type_, data, timeout)

    async def _schedule_store(self) -> ScheduleStore:
        if self._schedules is None:
            store = ScheduleStore(self.catalog.url, self.table, pool_size=1)
            await store.connect()
            self._schedules = store
        return self._schedules

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
        _check(protocol.check_name, target, "target")
        if slot is not None:
            _check(protocol.check_name, slot, "slot")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError("priority: expected an integer")
        if priority not in PRIORITY_RANGE:
            raise ValueError(f"priority: must be between {PRIORITY_RANGE[0]} and 32767")
        if at is not None and delay is not None:
            raise ValueError("give at or delay, not both")
        run_at = None
        if at is not None or delay is not None:
            run_at = math.ceil(at if at is not None else time.time() + (delay or 0))
        if callback_url is not None and not (
            URL_PATTERN.fullmatch(callback_url) and len(callback_url) <= 1024
        ):
            raise ValueError("callback_url: expected an http:// or https:// URL")
        text = None if data is None else json.dumps(data, ensure_ascii=False)
        job_id = await self.catalog.insert(
            target, slot=slot, priority=priority, run_at=run_at, data=text,
            callback_url=callback_url, manual=manual,
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

    async def jobs(
        self,
        *,
        status: str | None = None,
        target: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Rows, newest first, without output and data; `since`: created at or after
        this UNIX time."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status: expected one of {', '.join(STATUSES)}")
        return await self.catalog.search(
            status=status, target=target, limit=limit,
            since=None if since is None else int(since),
        )  # fmt: skip

    async def result(self, job_id: int) -> Outcome | None:
        """The outcome of a finished job, None while it is not finished.

        The outcome: {"id", "status" ("done" or "ignored"), "result" ("ok"/"fail"),
        "code", "signal", "stdout", "stderr", "duration" (whole seconds), "worker",
        "attempts"}.  Raises JobNotFound."""
        row = await self.job(job_id)
        if row is None:
            raise JobNotFound([job_id])
        return outcome(row) if row["status"] in FINISHED else None

    async def wait(self, job_id: int, timeout: float | None = None) -> Outcome:
        """The outcome of a job (see `result`) once it has finished.  Raises JobNotFound,
        and WaitTimeout after `timeout` seconds."""
        return (await self.wait_many([job_id], timeout))[job_id]

    async def wait_many(
        self,
        ids: Collection[int],
        timeout: float | None = None,
        on_finished: Callable[[Outcome], None] | None = None,
    ) -> dict[int, Outcome]:
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
        self.events = _reachable(address, self.master)
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

    # --- schedules ----------------------------------------------------------------

    async def schedule(
        self,
        name: str,
        target: str,
        *,
        cron: str | None = None,
        interval: int | None = None,
        slot: str | None = None,
        priority: int = 0,
        data: Any = None,
        timezone: str = "UTC",
        catch_up: str = "once",
        enabled: bool = True,
    ) -> Schedule:
        """Add a recurring schedule: a `cron` expression (5 fields, or 6 with seconds
        last) in `timezone`, or an `interval` in seconds.  Its jobs are like
        submit's.  `catch_up` after downtime: "once" (one job for the missed fire
        times) or "skip".  Raises ValueError, and StorageError for a name in use."""
        _check(protocol.check_name, target, "target")
        if slot is not None:
            _check(protocol.check_name, slot, "slot")
        if not 1 <= len(name) <= 64:
            raise ValueError("name: 1 to 64 characters")
        store = await self._schedule_store()
        text = None if data is None else json.dumps(data, ensure_ascii=False)
        return await store.add(
            name, Rule(cron, interval, timezone), target, slot, priority, text, catch_up, enabled
        )

    async def schedules(self) -> list[Schedule]:
        return await (await self._schedule_store()).list()

    async def get_schedule(self, name: str) -> Schedule | None:
        return await (await self._schedule_store()).get(name)

    async def remove_schedule(self, name: str) -> bool:
        """False if there is no such schedule.  Its jobs stay."""
        return await (await self._schedule_store()).remove(name)

    async def enable_schedule(self, name: str, enabled: bool = True) -> Schedule | None:
        """Enable (from the next fire time on: no catch-up) or disable; None if unknown."""
        return await (await self._schedule_store()).set_enabled(name, enabled)

    async def run_schedule_now(self, name: str) -> int | None:
        """One job of the schedule now (its fire times stay as they are); returns its id,
        None when this second has its job already.  Raises LookupError for a name that
        is not a schedule."""
        store = await self._schedule_store()
        schedule = await store.get(name)
        if schedule is None:
            raise LookupError(f"no schedule {name!r}")
        job_id = await store.create_job(schedule, int(time.time()))
        if job_id is not None:
            try:
                await self.poke([schedule.target], [job_id])
            except (NoAnswer, RequestError) as exc:
                log.warning("job %d added; the poke failed: %s", job_id, exc)
        return job_id


class Jobd:
    """The blocking twin of AsyncJobd (same arguments, same methods), for scripts.

        with Jobd("mysql://jobd:secret@127.0.0.1:3306/jobd") as jobd:
            outcome = jobd.wait(jobd.submit("report", data={"day": "2026-11-22"}))

    Each call runs on the twin's own event loop, so it cannot be used where an event
    loop is running already (use AsyncJobd there)."""

    def __init__(self, database: str | DatabaseURL, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self.jobd = AsyncJobd(database, **options)
            self._run(self.jobd.connect())
        except BaseException:
            self._loop.close()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    def close(self) -> None:
        if not self._loop.is_closed():
            try:
                self._run(self.jobd.close())
            finally:
                self._loop.close()

    def __enter__(self) -> Jobd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(
        self, target: str, *, slot: str | None = None, priority: int = 0,
        at: float | None = None, delay: float | None = None, data: Any = None,
        manual: bool = False, callback_url: str | None = None,
    ) -> int:  # fmt: skip
        submitted = self.jobd.submit(
            target, slot=slot, priority=priority, at=at, delay=delay, data=data,
            manual=manual, callback_url=callback_url,
        )  # fmt: skip
        return self._run(submitted)

    def poke(self, targets: Sequence[str] | None = None, ids: Sequence[int] = ()) -> Any:
        return self._run(self.jobd.poke(targets, ids))

    def job(self, job_id: int) -> dict[str, Any] | None:
        return self._run(self.jobd.job(job_id))

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        """Same filters as AsyncJobd.jobs: status, target, since, limit."""
        return self._run(self.jobd.jobs(**filters))

    def result(self, job_id: int) -> Outcome | None:
        return self._run(self.jobd.result(job_id))

    def wait(self, job_id: int, timeout: float | None = None) -> Outcome:
        return self._run(self.jobd.wait(job_id, timeout))

    def wait_many(
        self, ids: Collection[int], timeout: float | None = None,
        on_finished: Callable[[Outcome], None] | None = None,
    ) -> dict[int, Outcome]:  # fmt: skip
        return self._run(self.jobd.wait_many(ids, timeout, on_finished))

    def run_manual(self, ids: Sequence[int], timeout: float | None = None) -> dict[str, Any]:
        return self._run(self.jobd.run_manual(ids, timeout))

    def targets(self) -> dict[str, dict[str, Any]]:
        return self._run(self.jobd.targets())

    def stats(self, *, target: str | None = None, since: float = 0) -> list[TargetStats]:
        return self._run(self.jobd.stats(target=target, since=since))

    def purge(
        self, older_than: float, *, statuses: Sequence[str] = FINISHED, dry_run: bool = False
    ) -> int:
        return self._run(self.jobd.purge(older_than, statuses=statuses, dry_run=dry_run))

    def schedule(self, name: str, target: str, **options: Any) -> Schedule:
        """Same options as AsyncJobd.schedule: cron or interval, slot, priority, data,
        timezone, catch_up, enabled."""
        return self._run(self.jobd.schedule(name, target, **options))

    def schedules(self) -> list[Schedule]:
        return self._run(self.jobd.schedules())

    def get_schedule(self, name: str) -> Schedule | None:
        return self._run(self.jobd.get_schedule(name))

    def remove_schedule(self, name: str) -> bool:
        return self._run(self.jobd.remove_schedule(name))

    def enable_schedule(self, name: str, enabled: bool = True) -> Schedule | None:
        return self._run(self.jobd.enable_schedule(name, enabled))

    def run_schedule_now(self, name: str) -> int | None:
        return self._run(self.jobd.run_schedule_now(name))


def targets_from_status(status: Mapping[str, Any], from_worker: bool) -> dict[str, Any]:
    """{target: {"description", "workers": {worker: {slot: concurrency}}}} from the reply
    to `status` of a worker (`from_worker`) or of the master."""
    out: dict[str, dict[str, Any]] = {}
    if from_worker:
        for target, t in status["targets"].items():
            slots = {slot: s["concurrency"] for slot, s in t["slots"].items()}
            workers = {status["name"]: slots}
            out[target] = {"description": t.get("description", ""), "workers": workers}
        return dict(sorted(out.items()))
    for name, worker in sorted(status["workers"].items()):
        descriptions = worker.get("descriptions") or {}
        for target, slots in worker["targets"].items():
            entry = out.setdefault(target, {"description": "", "workers": {}})
            entry["workers"][name] = slots
            # Workers may describe a target differently; the first one that does wins.
            entry["description"] = entry["description"] or descriptions.get(target, "")
    return dict(sorted(out.items()))


def _check(check: Callable[[Any, str], Any], value: Any, key: str) -> None:
    """A protocol check as a ValueError (the natural error of a Python API)."""
    try:
        check(value, key)
    except RequestError as exc:
        raise ValueError(exc.message) from None


def _reachable(address: str, master: str) -> str:
    """A bind address as a client can connect to it: tcp://*:7082 -> tcp://MASTER:7082."""
    parts = urlsplit(address)
    if parts.scheme != "tcp" or (parts.hostname or "") not in _WILDCARDS:
        return address
    host = urlsplit(master).hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{parts.port}"
