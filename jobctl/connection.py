"""The daemon jobctl talks to: validation with the shared protocol tables, the call,
and the exit statuses.

    0 success · 1 the daemon answered with an error · 2 usage error · 3 no answer
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import click

from jobctl import settings
from jobd.config import DatabaseURL
from jobd.wire.client import ClientCurve, NoAnswer, RequestError, call
from jobd.wire.curve import CurveError
from jobd.wire.protocol import MASTER_REQUESTS, WORKER_REQUESTS, RequestType

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3

MASTER, WORKER = "master", "worker"
TABLES: dict[str, Mapping[str, RequestType]] = {MASTER: MASTER_REQUESTS, WORKER: WORKER_REQUESTS}


def fail(message: str, status: int) -> None:
    click.echo(f"jobctl: {message}", err=True)
    raise SystemExit(status)


@dataclass(frozen=True)
class Daemon:
    kind: str  # MASTER or WORKER
    address: str
    timeout: float
    json: bool
    #: CURVE: (jobctl's key pair file, the daemon's public key file); None: plain text.
    curve_files: tuple[str, str] | None = None
    #: For the commands that use the jobs table: --database as given (see database_url),
    #: --table (or the defaults file's), and the defaults file.
    database_option: str | None = None
    table: str = settings.DEFAULT_TABLE
    defaults: settings.Settings = field(default_factory=settings.Settings)

    @functools.cached_property
    def curve(self) -> ClientCurve | None:
        """The keys of curve_files, read when first needed (so keygen works before the
        files exist); an unusable file is a usage error."""
        if self.curve_files is None:
            return None
        try:
            return ClientCurve.load(*self.curve_files)
        except CurveError as exc:
            raise click.UsageError(str(exc)) from None

    def database_url(self) -> DatabaseURL:
        """--database, else JOBD_DATABASE_URL, else the defaults file; a usage error if none."""
        return settings.database_url(self.database_option, self.defaults)

    def require(self, kind: str, command: str, hint: str = "") -> None:
        """A usage error unless this command is for the chosen kind of daemon."""
        if self.kind != kind:
            option = "--master [ADDR]" if kind == MASTER else "--worker [ADDR]"
            extra = f"; {hint}" if hint else ""
            raise click.UsageError(f"{command} is a {kind} command: use {option}{extra}")

    def request(
        self, type_: str, data: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Validate with the shared request table (a usage error), send, return the reply."""
        self.validate(type_, data)
        try:
            return call(
                self.address, type_, data, timeout or self.timeout, TABLES[self.kind], self.curve
            )
        except NoAnswer as exc:
            fail(str(exc), EXIT_NO_ANSWER)
        except RequestError as exc:
            fail(f"{self.kind} {self.address}: {exc.message} ({exc.code})", EXIT_ERROR)

    def validate(self, type_: str, data: Mapping[str, Any] | None) -> None:
        try:
            TABLES[self.kind][type_].validate(dict(data or {}))
        except RequestError as exc:
            raise click.UsageError(exc.message) from None

    def show(self, reply: Any, render: Callable[[Any], str]) -> None:
        """Print the reply (JSON, or the human form); exit 1 when it reports errors."""
        if self.json:
            click.echo(json.dumps(_jsonable(reply), indent=2, sort_keys=True))
        else:
            text = render(reply)
            if text:
                click.echo(text)
        if isinstance(reply, dict) and (reply.get("errors") or reply.get("unserved")):
            raise SystemExit(EXIT_ERROR)


def _jsonable(value: Any) -> Any:
    """msgpack allows integer map keys (job ids); JSON wants strings, sorted as strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
