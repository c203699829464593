"""The HTTP side of both daemons (aiohttp): a worker's Prometheus metrics, and the
master's metrics and dashboard.  One server start, one `/metrics` handler over a
prometheus-client registry, and HTTP basic auth against the users file (what a
Prometheus scraper sends), failed attempts rate limited.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from jobd.config_exposure import HttpConfig
from jobd.users import User, UsersFile

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Failed logins (or basic auth attempts) of one client within FAILURE_WINDOW seconds
#: after which it is refused for the rest of the window.
MAX_FAILURES, FAILURE_WINDOW = 5, 60.0
#: Seconds a basic auth header that checked out is taken without checking it again.
VERIFIED_FOR = 60.0


class StartupFailed(Exception):
    """The HTTP endpoint cannot be served (the address is taken, say)."""


async def serve(http: HttpConfig, app: web.Application) -> web.AppRunner:
    """Serve `app` at http.address; raises StartupFailed naming the address."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, http.host, http.port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupFailed(f"cannot serve HTTP on {http.address}: {exc.strerror}") from None
    return runner


def metrics_handler(registry: CollectorRegistry) -> Handler:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


class FailedLogins:
    """Counts failed logins by client address; a client past MAX_FAILURES within
    FAILURE_WINDOW seconds is refused until the oldest of them is that old."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.setdefault(client, deque())
        now = time.monotonic()
        while failures and now - failures[0] > FAILURE_WINDOW:
            failures.popleft()
        return failures

    def blocked(self, client: str) -> bool:
        return len(self._recent(client)) >= MAX_FAILURES

    def failed(self, client: str) -> None:
        self._recent(client).append(time.monotonic())


def client_of(request: web.Request) -> str:
    return request.remote or "?"


async def password_checks(user: User, password: str) -> bool:
    """bcrypt, on a thread: a check takes a quarter of a second, which the event loop
    (the daemon's claims, its replies) must not wait for."""
    return await asyncio.to_thread(user.checks, password)


class BasicAuth:
    """HTTP basic auth against the users file (what a Prometheus scraper sends).  A
    header that checked out is remembered for VERIFIED_FOR seconds (by its digest), so a
    scrape every few seconds costs one bcrypt check a minute, not one each."""

    def __init__(self, users: UsersFile, failures: FailedLogins) -> None:
        self.users = users
        self.failures = failures
        self._verified: dict[bytes, tuple[float, str]] = {}  # digest: (until, the hash)

    async def user(self, request: web.Request) -> User | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user = self.users.get(name)
        if user is None:
            return None
        digest = hashlib.sha256(header.encode()).digest()
        until, checked = self._verified.get(digest, (0.0, ""))
        if until > time.monotonic() and checked == user.hash:  # the same password still
            return user
        if not await password_checks(user, password):
            return None
        self._verified[digest] = (time.monotonic() + VERIFIED_FOR, user.hash)
        return user

    def __call__(self, handler: Handler) -> Handler:
        """Wrap a handler so it answers only requests with a user's credentials."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            client = client_of(request)
            if self.failures.blocked(client):
                raise web.HTTPTooManyRequests(text="too many failed logins; wait a minute\n")
            if await self.user(request) is None:
                if "Authorization" in request.headers:
                    self.failures.failed(client)
                raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="jobd"'})
            return await handler(request)

        return guarded


def basic_auth(users: UsersFile, failures: FailedLogins) -> Callable[[Handler], Handler]:
    return BasicAuth(users, failures)
