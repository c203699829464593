"""Answering requests: a `Dispatcher` checks each request against a request table of
`jobd.wire.protocol` and runs its handler, one small function per request type.  The
worker, the master and the master link of a worker all answer through one.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from jobd.wire import protocol
from jobd.wire.protocol import ErrorCode, RequestError, RequestType

#: A request's handler: a coroutine function, or a plain function for a request answered
#: without waiting for anything (it runs as the request is read, with no task).
Handler = Callable[[dict[str, Any]], Awaitable[Any]] | Callable[[dict[str, Any]], Any]

#: The envelope (ROUTER routing frames) of the request a handler is answering: set by
#: the endpoint right before it runs a plain handler or starts a handler's task (which
#: copies the context).
request_envelope: contextvars.ContextVar[tuple[bytes, ...]] = contextvars.ContextVar(
    "request_envelope", default=()
)


class Dispatcher:
    """Validates a request against a request table and runs its handler."""

    def __init__(
        self,
        table: Mapping[str, RequestType],
        handlers: Mapping[str, Handler],
        log: logging.Logger,
    ) -> None:
        missing = set(table) - set(handlers)
        extra = set(handlers) - set(table)
        if missing or extra:
            raise ValueError(f"handlers do not match the request table: {missing or extra}")
        self.table = table
        self.handlers = handlers
        self.log = log

    def parse(self, message: Any) -> tuple[int, str, dict[str, Any]] | dict[str, Any]:
        """(no, type, clean data) of a valid request, else its error reply."""
        no = protocol.request_no(message)
        try:
            return protocol.parse_request(message, self.table)
        except RequestError as exc:
            return protocol.error_message(no, exc.code, exc.message)
        except Exception:
            self.log.exception("request #%s could not be checked", no)
            return protocol.error_message(no, ErrorCode.INTERNAL, "internal error (logged)")

    def start(
        self, no: int, type_: str, data: dict[str, Any]
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Run the handler of a request `parse` accepted: the reply, when a plain handler
        gave it at once (no task, no turn of the event loop); else the reply's awaitable,
        for a coroutine handler or a plain one that must wait for something (the master's
        poke while a poll to a worker is in flight)."""
        self.log.debug("request %s #%s", type_, no)
        try:
            result = self.handlers[type_](data)
        except Exception as exc:
            return self._failed(no, exc)
        if inspect.isawaitable(result):
            return self._finish(no, result)
        return protocol.reply_message(no, result)

    async def run(self, no: int, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        """The reply to a request `parse` accepted."""
        reply = self.start(no, type_, data)
        return reply if isinstance(reply, dict) else await reply

    async def _finish(self, no: int, pending: Awaitable[Any]) -> dict[str, Any]:
        try:
            return protocol.reply_message(no, await pending)
        except Exception as exc:
            return self._failed(no, exc)

    def _failed(self, no: int, exc: Exception) -> dict[str, Any]:
        """The error reply for a handler that raised: its RequestError, else internal."""
        if isinstance(exc, RequestError):
            return protocol.error_message(no, exc.code, exc.message)
        self.log.error("request #%s failed", no, exc_info=exc)
        return protocol.error_message(no, ErrorCode.INTERNAL, "internal error (logged)")

    async def dispatch(self, message: Any) -> dict[str, Any]:
        parsed = self.parse(message)
        return parsed if isinstance(parsed, dict) else await self.run(*parsed)
