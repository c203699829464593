"""The dashboard's pages and actions, one small handler each.  Every page reads the
table (DashboardStore, ScheduleStore) and the master's registry; every action goes
through the master's own request handlers (checked against the protocol's request
table), so a button does exactly what the same request of jobctl does."""

from __future__ import annotations

import asyncio
import inspect
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from jobd.jobs import ran, waited
from jobd.store.columns import STATUSES
from jobd.store.dashboard import DashboardStore
from jobd.store.pool import StorageError
from jobd.store.schedules import ScheduleStore
from jobd.wire.protocol import MASTER_REQUESTS, RequestError
from jobd_master.web.charts import bars, per_minute

if TYPE_CHECKING:
    from jobd_master.master import Master

PAGE_SIZE = 50
#: The headings of the pages that live.html shows.
TITLES = {"overview": "Overview", "targets": "Targets", "workers": "Workers"}


class Pages:
    def __init__(
        self,
        master: Master,
        store: DashboardStore | None,
        schedules: ScheduleStore | None,
        templates: jinja2.Environment,
    ) -> None:
        self.master = master
        self.store = store
        self.schedules = schedules
        self.templates = templates
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- helpers ------------------------------------------------------------------

    def render(self, request: web.Request, name: str, **context: Any) -> web.Response:
        """The page `name`: its own template, or `live.html` around `_NAME.html`; just
        `_NAME.html` for the refresh of a page (`?fragment=1`)."""
        if request.query.get("fragment") == "1":
            template = self.templates.get_template(f"_{name}.html")
        else:
            template = self.templates.select_template([f"{name}.html", "live.html"])
        html = template.render(
            session=request["session"], page=name, database=self.store is not None,
            now=time.time(), request_path=request.path, title=TITLES.get(name), **context,
        )  # fmt: skip
        return web.Response(text=html, content_type="text/html")

    async def call(self, type_: str, data: dict[str, Any]) -> Any:
        """A request of the master's own, checked as one from the wire would be."""
        result = self.master.handlers[type_](MASTER_REQUESTS[type_].validate(data))
        return await result if inspect.isawaitable(result) else result

    def _store(self) -> DashboardStore:
        if self.store is None:
            raise web.HTTPServiceUnavailable(text="the dashboard needs the master's database\n")
        return self.store

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- pages --------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        now = time.time()
        minute = int(now // 60)
        queue, hour, day = [], None, None
        if self.store is not None:
            queue = await self.store.queue(now)
            counts = await self.store.per_minute(now - 86400)
            hour = bars(per_minute(counts, minute - 59, 60), "jobs a minute, last hour", "1 h ago")
            # A bar of ten minutes: a day of minutes is wider than the chart.
            day = bars(
                per_minute(counts, minute - 1439, 1440, span=10),
                "jobs a minute, the last day, ten-minute means",
                "24 h ago",
            )
        return self.render(request, "overview", queue=queue, hour=hour, day=day)

    async def targets(self, request: web.Request) -> web.Response:
        queue = {t.target: t for t in await self.store.queue()} if self.store else {}
        status = await self.call("status", {"poll_workers": True})
        served: dict[str, dict[str, Any]] = {}
        for name, worker in status["workers"].items():
            own = (worker.get("status") or {}).get("targets", {})
            for target, slots in worker["targets"].items():
                entry = served.setdefault(target, {"workers": {}, "paused": []})
                entry["workers"][name] = slots
                if own.get(target, {}).get("paused"):
                    entry["paused"].append(name)
        names = sorted(set(queue) | set(served))
        rows = [(name, queue.get(name), served.get(name)) for name in names]
        return self.render(request, "targets", rows=rows)

    async def jobs(self, request: web.Request) -> web.Response:
        store = self._store()
        query = request.query
        filters = {
            "status": query.get("status") if query.get("status") in STATUSES else None,
            "target": query.get("target") or None,
            "since": _moment(query.get("since")),
            "until": _moment(query.get("until")),
            "text": query.get("text") or None,
            "before": _number(query.get("before")),
        }
        page = await store.search(PAGE_SIZE, **filters)
        more = {k: v for k, v in query.items() if k not in ("before", "fragment") and v}
        return self.render(
            request, "jobs", rows=page.rows, query=query, more=more, last=page.next_before,
            searched_down_to=page.searched_down_to, statuses=STATUSES, ran=ran,
        )  # fmt: skip

    async def job(self, request: web.Request) -> web.Response:
        row = await self._store().job(int(request.match_info["id"]))
        if row is None:
            raise web.HTTPNotFound(text="no such job\n")
        return self.render(request, "job", row=row, ran=ran(row), waited=waited(row), every=3)

    async def workers(self, request: web.Request) -> web.Response:
        status = await self.call("status", {"poll_workers": True})
        return self.render(request, "workers", workers=status["workers"])

    async def schedules_page(self, request: web.Request) -> web.Response:
        if self.schedules is None:
            raise web.HTTPServiceUnavailable(text="the dashboard needs the master's database\n")
        return self.render(request, "schedules", schedules=await self.schedules.list())

    # --- actions ------------------------------------------------------------------

    async def pause_or_continue(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ("pause", "continue"):
            raise web.HTTPNotFound()
        try:
            await self.call(action, {"targets": [request.match_info["target"]]})
        except RequestError as exc:
            raise web.HTTPConflict(text=f"{exc.message}\n") from None
        raise web.HTTPSeeOther("/targets")

    async def retry(self, request: web.Request) -> web.Response:
        store = self._store()
        job_id = int(request.match_info["id"])
        try:
            new_id = await store.retry(job_id)
        except StorageError as exc:
            raise web.HTTPConflict(text=f"{exc}\n") from None
        row = await store.job(new_id)
        assert row is not None
        self.master.poke([row["target"]], [new_id])
        raise web.HTTPSeeOther(f"/jobs/{new_id}")

    async def run(self, request: web.Request) -> web.Response:
        row = await self._store().job(int(request.match_info["id"]))
        if row is None or row["status"] != "manual":
            raise web.HTTPConflict(text="only a manual job can be run by hand\n")
        # The reply comes when the job has finished: the page shows it as it goes.
        self._spawn(self.call("run-manual", {"jobs": [{"id": row["id"], "target": row["target"]}]}))
        raise web.HTTPSeeOther(f"/jobs/{row['id']}")

    async def schedule(self, request: web.Request) -> web.Response:
        if self.schedules is None:
            raise web.HTTPServiceUnavailable(text="the dashboard needs the master's database\n")
        name, action = request.match_info["name"], request.match_info["action"]
        entry = await self.schedules.get(name)
        if entry is None:
            raise web.HTTPNotFound(text="no such schedule\n")
        if action in ("enable", "disable"):
            await self.schedules.set_enabled(name, action == "enable")
        elif action == "run":
            job_id = await self.schedules.create_job(entry, int(time.time()))
            if job_id is not None:
                self.master.poke([entry.target], [job_id])
        else:
            raise web.HTTPNotFound()
        raise web.HTTPSeeOther("/schedules")


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _moment(text: str | None) -> int | None:
    """A time from the form (`2026-12-08T01:20`, this host's time zone), or UNIX time."""
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        raise web.HTTPBadRequest(text=f"not a time: {text[:40]}\n") from None
