"""The master's PUB socket: every job event a worker reports, published at once.

Publishing never blocks and never fails a worker's request: a PUB socket drops what a
slow subscriber cannot take (its high-water mark) instead of queueing it for ever.
See jobd.wire.protocol (job event topics) and jobd.wire.subscription.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import zmq
import zmq.asyncio

from jobd.wire import protocol
from jobd.wire.curve import KeyPair
from jobd.wire.endpoint import bind_server
from jobd.wire.protocol import topic

log = logging.getLogger("jobd_master.events")


class EventPublisher:
    def __init__(self, sock: zmq.asyncio.Socket, address: str) -> None:
        self.address = address
        self._async_sock = sock
        # A plain (synchronous) view of the same socket: a PUB send with DONTWAIT returns
        # at once, so there is nothing to await and no future to keep.
        self._sock = zmq.Socket.shadow(sock.underlying)
        self.published = 0
        self.dropped = 0

    @classmethod
    def bind(
        cls, ctx: zmq.asyncio.Context, endpoint: str, curve: KeyPair | None = None
    ) -> EventPublisher:
        """A PUB socket bound at `endpoint`, a CURVE server with `curve` like the master's
        ROUTER (the context's authenticator admits the same keys); raises zmq.ZMQError
        if it cannot bind."""
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        return cls(bind_server(sock, endpoint, curve), endpoint)

    def publish(self, events: Iterable[Mapping[str, Any]]) -> None:
        for event in events:
            try:
                self._sock.send_multipart(
                    [topic(event), protocol.encode(event)], flags=zmq.DONTWAIT
                )
                self.published += 1
            except zmq.ZMQError as exc:  # not expected of PUB; never let it reach a worker
                self.dropped += 1
                log.debug("event not published: %s", exc)

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "published": self.published, "dropped": self.dropped}

    def close(self) -> None:
        self._async_sock.close(linger=0)
