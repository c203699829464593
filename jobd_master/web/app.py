"""jobd-master's HTTP endpoint (`http: HOST:PORT`): the dashboard's pages, their
actions, the login, and the Prometheus metrics at /metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web

from jobd.config import MasterConfig
from jobd.runtime.http import Handler, basic_auth, client_of, metrics_handler, serve
from jobd.store.dashboard import DashboardStore
from jobd.store.schedules import ScheduleStore
from jobd.users import UsersFile
from jobd_master.web.auth import Auth, secret_key
from jobd_master.web.metrics import MasterMetrics
from jobd_master.web.pages import Pages

if TYPE_CHECKING:
    from jobd_master.master import Master

HERE = Path(__file__).resolve().parent


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined,
    )  # fmt: skip
    env.filters["clock"] = _clock
    env.filters["seconds"] = _seconds
    env.globals["query_string"] = lambda query: urlencode(
        [(k, v) for k, v in query.items() if k != "fragment" and v]
    )
    return env


def _seconds(value: float | None) -> str:
    """A duration read at a glance: 0.003 s, 2.19 s, 42 s, 3 min 20 s, 5 h 12 min, 2 d 3 h."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.3g} s"
    whole = round(value)
    if whole < 100:
        return f"{whole} s"
    minutes, seconds = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _clock(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


#: Every page (GET) and action (POST) of the dashboard: method, path, Pages handler.
PAGE_ROUTES = (
    ("GET", "/", "overview"),
    ("GET", "/targets", "targets"),
    ("POST", "/targets/{target}/{action}", "pause_or_continue"),
    ("GET", "/jobs", "jobs"),
    ("GET", "/jobs/{id:\\d+}", "job"),
    ("POST", "/jobs/{id:\\d+}/retry", "retry"),
    ("POST", "/jobs/{id:\\d+}/run", "run"),
    ("GET", "/workers", "workers"),
    ("GET", "/schedules", "schedules_page"),
    ("POST", "/schedules/{name}/{action}", "schedule"),
)


class Web:
    """The app and what it holds: the stores (with a database), auth and metrics."""

    def __init__(self, config: MasterConfig, master: Master) -> None:
        self.config = config
        self.master = master
        database = config.database
        self.store = DashboardStore(database, config.table, pool_size=2) if database else None
        self.schedules = ScheduleStore(database, config.table, pool_size=1) if database else None
        users = UsersFile(config.http.users) if config.http.users else None
        self.auth = Auth(users, secret_key(config.http.secret_file))
        self.metrics = MasterMetrics(master, self.store)
        self.pages = Pages(master, self.store, self.schedules, templates())
        self.runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth.middleware()])
        metrics = metrics_handler(self.metrics.registry)
        if self.auth.users is not None:
            metrics = basic_auth(self.auth.users, self.auth.failures)(metrics)
        app.router.add_get("/metrics", self._refreshed(metrics))
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        for method, path, name in PAGE_ROUTES:
            app.router.add_route(method, path, getattr(self.pages, name))
        app.router.add_static("/static/", HERE / "static")
        return app

    def _refreshed(self, handler: Handler) -> Handler:
        """The metrics handler, with the queue read again first if it is stale."""

        async def metrics(request: web.Request) -> web.StreamResponse:
            await self.metrics.refresh()
            return await handler(request)

        return metrics

    async def start(self) -> None:
        for store in (self.store, self.schedules):
            if store is not None:
                await store.connect()
        self.runner = await serve(self.config.http, self.app())

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        for store in (self.store, self.schedules):
            if store is not None:
                await store.close()

    # --- login --------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        html = self.pages.templates.get_template("login.html").render(
            next=_local(request.query.get("next")), error=None, session=None, page="login"
        )
        return web.Response(text=html, content_type="text/html")

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        target = _local(str(form.get("next", "/")))
        if self.auth.users is None:
            raise web.HTTPSeeOther(target)
        if self.auth.failures.blocked(client_of(request)):
            raise web.HTTPTooManyRequests(text="too many failed logins; wait a minute\n")
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        session = await self.auth.login(request, name, password)
        if session is None:
            html = self.pages.templates.get_template("login.html").render(
                next=target, error="wrong user or password", session=None, page="login"
            )
            return web.Response(text=html, content_type="text/html", status=401)
        response = web.HTTPSeeOther(target)
        self.auth.store(response, session)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/login")
        response.del_cookie("jobd_session")
        raise response


def _local(target: str | None) -> str:
    """Where to go after the login: a path of this dashboard, never another site."""
    if not target or not target.startswith("/") or urlsplit(target).netloc or "//" in target:
        return "/"
    return target
