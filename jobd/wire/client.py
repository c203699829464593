"""The light client of the jobd and jobd-master request protocol: no database driver.

    async with Client("tcp://127.0.0.1:7080") as worker:
        await worker.request("poll", {"targets": ["mail"]})

    call("tcp://127.0.0.1:7081", "poke", {"targets": ["mail"]})   # blocking

Request data is validated against the shared request table before it is sent, so
a client learns about a malformed request without a round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import zmq
import zmq.asyncio

from jobd.wire import protocol
from jobd.wire.curve import ClientCurve, make_client
from jobd.wire.endpoint import Endpoint, NoAnswer, configure_socket
from jobd.wire.protocol import RequestError, RequestType

__all__ = ["Client", "ClientCurve", "NoAnswer", "RequestError", "call"]

DEFAULT_TIMEOUT = 5.0
log = logging.getLogger("jobd.client")


class Client:
    """A DEALER connection to one daemon.

    `curve`: for a daemon with CURVE keys, this client's key pair and the daemon's public
    key, `ClientCurve.load("ops.key_secret", "master.key")` (docs/curve.md).  A daemon
    that does not let the key in never answers: requests end in NoAnswer."""

    def __init__(
        self,
        address: str,
        timeout: float = DEFAULT_TIMEOUT,
        table: Mapping[str, RequestType] | None = None,
        curve: ClientCurve | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.table = table
        self.curve = curve
        self._ctx: zmq.asyncio.Context | None = None
        self._endpoint: Endpoint | None = None

    async def __aenter__(self) -> Client:
        self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.DEALER)
        configure_socket(sock, max_message_size=-1)  # replies may be large (job output)
        if self.curve is not None:
            make_client(sock, self.curve)
        sock.connect(self.address)
        self._endpoint = Endpoint(sock, None, log)
        self._endpoint.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.close()
            self._endpoint = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def request(
        self, type_: str, data: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Send one request; returns the reply data.

        Raises RequestError (the daemon's error, or bad_request before sending) and NoAnswer.
        """
        if self._endpoint is None:
            raise RuntimeError("Client is not connected; use 'async with Client(...)'")
        if self.table is not None:
            request_type = self.table.get(type_)
            if request_type is None:
                raise RequestError(protocol.ErrorCode.UNKNOWN_REQUEST, f"unknown request {type_}")
            request_type.validate(dict(data or {}))
        try:
            return await self._endpoint.request(
                type_, data, timeout=self.timeout if timeout is None else timeout
            )
        except NoAnswer:
            wait = self.timeout if timeout is None else timeout
            raise NoAnswer(f"no answer from {self.address} within {wait:g} s") from None


def call(
    address: str,
    type_: str,
    data: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    table: Mapping[str, RequestType] | None = None,
    curve: ClientCurve | None = None,
) -> Any:
    """Blocking form of Client.request for scripts and the CLI."""

    async def once() -> Any:
        async with Client(address, timeout, table, curve) as client:
            return await client.request(type_, data)

    return asyncio.run(once())
