"""Who may see and steer the dashboard.

With `http_users` (a file of `jobctl dashboard-user`), every page needs a login: a
session in a signed cookie (itsdangerous) names the user and their role, `viewer` (reads)
or `operator` (also acts).  Without it (an address only this host reaches) everyone is an
operator, in an anonymous session.  Either way every action is a POST carrying the
session's CSRF token, so no other site can make a browser act; failed logins are rate
limited by client address (jobd.runtime.http.FailedLogins).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer

from jobd.runtime.http import FailedLogins, Handler, client_of, password_checks
from jobd.users import UsersFile

COOKIE = "jobd_session"
#: Seconds a login lasts.
SESSION_AGE = 12 * 3600
#: Paths served without a session.
OPEN_PATHS = ("/login", "/static/", "/metrics")
#: Forms a viewer may send too (they act on nothing but the session).
VIEWER_FORMS = ("/logout",)


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    csrf: str

    @property
    def acts(self) -> bool:
        return self.role == "operator"


def secret_key(path: str | None) -> bytes:
    """The key that signs the cookies: the file's, or a new one (logins then last until
    the master restarts)."""
    if path is None:
        return secrets.token_bytes(32)
    try:
        return Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the session key: {exc.strerror}") from None


def to_login(request: web.Request) -> web.HTTPException:
    """To the login, and from it back to the page asked for (`next`, quoted whole: a
    query of its own would be cut at its first `&`).  A request of htmx (a page polling
    its part) is the page's: htmx then loads the login in the window (HX-Redirect) with
    the page as `next`, instead of putting the login page inside the part."""
    if request.headers.get("HX-Request") == "true":
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        back = current.path + (f"?{current.query}" if current.query else "")
        location = "/login?" + urlencode({"next": back or "/"})
        return web.HTTPUnauthorized(headers={"HX-Redirect": location})
    # After the login the browser GETs `next`: a form's action cannot be one.
    back = request.path_qs if request.method == "GET" else "/"
    return web.HTTPSeeOther("/login?" + urlencode({"next": back}))


class Auth:
    def __init__(self, users: UsersFile | None, key: bytes) -> None:
        self.users = users
        self._cookies = URLSafeTimedSerializer(key, salt="jobd-session")
        self.failures = FailedLogins()

    def new_session(self, user: str, role: str) -> Session:
        return Session(user, role, secrets.token_urlsafe(16))

    def read(self, request: web.Request) -> Session | None:
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            data: dict[str, Any] = self._cookies.loads(value, max_age=SESSION_AGE)
        except BadSignature:
            return None
        if self.users is None:
            return Session(data["u"], data["r"], data["c"])
        user = self.users.get(data["u"])
        if user is None:
            return None  # the user was removed
        return Session(user.name, user.role, data["c"])  # the role the file gives now

    def store(self, response: web.StreamResponse, session: Session) -> None:
        value = self._cookies.dumps({"u": session.user, "r": session.role, "c": session.csrf})
        response.set_cookie(COOKIE, value, max_age=SESSION_AGE, httponly=True, samesite="Strict")

    async def login(self, request: web.Request, name: str, password: str) -> Session | None:
        """The session of a user whose password checks out; None (counted) otherwise."""
        assert self.users is not None
        user = self.users.get(name)
        if user is None or not await password_checks(user, password):
            self.failures.failed(client_of(request))
            return None
        return self.new_session(user.name, user.role)

    def middleware(self) -> Any:
        @web.middleware
        async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.startswith(OPEN_PATHS):
                return await handler(request)
            session = self.read(request)
            fresh = None
            if session is None:
                if self.users is not None:
                    raise to_login(request)
                session = fresh = self.new_session("anonymous", "operator")
            request["session"] = session
            if request.method == "POST":
                form = await request.post()
                if not secrets.compare_digest(str(form.get("csrf", "")), session.csrf):
                    raise web.HTTPForbidden(text="the form's CSRF token does not match\n")
                if not session.acts and request.path not in VIEWER_FORMS:
                    raise web.HTTPForbidden(text=f"{session.user} is a viewer\n")
            response = await handler(request)
            if fresh is not None:
                self.store(response, fresh)
            return response

        return sessions
