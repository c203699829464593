"""A subscriber to the job events jobd-master publishes, for clients.

A worker reports each job's start and finish (`Worker.on_event`) to its master in
`job-events` messages; the master publishes every event on its PUB socket (`events:` in
its config) as two frames:

    frame 1  topic  b"job/<id>/<event>"      e.g. b"job/123/finished"
    frame 2  the event, one msgpack map      (fields: jobd.wire.checks.EVENT_FIELDS)

ZeroMQ filters by topic prefix, so a SUB socket subscribed to `job/123/` gets the events
of job 123 and one subscribed to `job/` gets all of them.  The trailing slash matters:
`job/12/` does not match job 123.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import zmq
import zmq.asyncio

from jobd.wire import protocol
from jobd.wire.curve import ClientCurve, make_client
from jobd.wire.protocol import TOPIC_PREFIX, job_prefix

#: Largest event message a subscriber accepts (an event is about 200 bytes).
MAX_EVENT_SIZE = 64 << 10


class Subscription:
    """A SUB socket on a master's events endpoint, for some jobs or for all of them.

    Subscribe before looking at the jobs' rows: an event published before the
    subscription reached the master is lost (PUB/SUB keeps no history).
    """

    #: Above this many jobs, subscribe to every event and filter here (one prefix
    #: each would cost the master a longer topic match for every event).
    MANY = 100

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        address: str,
        ids: Collection[int] | None = None,
        curve: ClientCurve | None = None,
    ) -> None:
        self.address = address
        self.ids = None if ids is None else set(ids)
        self.connected = False
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_EVENT_SIZE)
        if self.ids is None or len(self.ids) > self.MANY:
            self.sock.setsockopt(zmq.SUBSCRIBE, TOPIC_PREFIX)
        else:
            for job_id in self.ids:
                self.sock.setsockopt(zmq.SUBSCRIBE, job_prefix(job_id))
        if curve is not None:  # the master's key, as for its request socket
            make_client(self.sock, curve)
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sock.connect(address)

    async def wait_connected(self, timeout: float) -> bool:
        """Whether the endpoint answered (a completed ZeroMQ handshake) within `timeout`."""
        if not self.connected:
            try:
                await asyncio.wait_for(self._monitor.recv_multipart(), timeout)
                self.connected = True
            except TimeoutError:
                pass
        return self.connected

    async def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next event of the subscribed jobs, or None when `timeout` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = max(0.0, deadline - loop.time())  # 0: only what has arrived
            if not await self.sock.poll(remaining * 1000, zmq.POLLIN):
                return None
            frames = await self.sock.recv_multipart()
            try:
                event = protocol.decode(frames[-1])
            except protocol.RequestError:
                continue
            if not isinstance(event, dict) or not isinstance(event.get("id"), int):
                continue
            if self.ids is None or event["id"] in self.ids:
                return event

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)
