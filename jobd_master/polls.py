"""Coalescing of pokes into polls, one flow per worker.

A worker has at most one `poll` from the master in flight.  The first poke is sent at
once; targets poked while that poll awaits its reply are gathered and go out together
in the next poll as soon as the reply (or a failure) comes back.  So a burst of pokes
costs one poll per round trip to the worker, whatever its size, and no poke waits for
a timer: there is no fixed delay anywhere.

A poke's reply is due once a poll carrying its targets has been handed to the socket
(not when the worker answered it, and not when the jobs ran).

The ids of rows a poke names go with a poll sent at once, for the worker to claim them
by id; a poll that gathers pokes names none (it catches up with a burst, which the
worker's usual claim takes best first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from jobd.wire.endpoint import NoAnswer
from jobd.wire.protocol import RequestError

log = logging.getLogger("jobd_master.polls")

#: Hands one poll of these targets (naming these rows) to the socket at once and returns
#: the future of the worker's reply (failing with NoAnswer or RequestError); raises
#: NoAnswer if it cannot.
PollRequest = Callable[[list[str], Sequence[int]], "asyncio.Future[Any]"]
#: Told about a poll that failed, with its targets.
PollFailed = Callable[[list[str], Exception], None]


class PollFlow:
    def __init__(self, name: str, request: PollRequest, failed: PollFailed) -> None:
        self.name = name
        self._request = request
        self._failed = failed
        #: Targets poked since the last poll went out.
        self.pending: set[str] = set()
        #: Resolved (True) when the poll carrying `pending` has been sent; False if never.
        self._next_sent: asyncio.Future[bool] | None = None
        #: The reply of the poll in flight.  No task per poll: with 100 workers a poke
        #: would otherwise make (and run) a task for each worker it reaches.
        self._in_flight: asyncio.Future[Any] | None = None
        self._closed = False
        #: Polls sent so far (shown in the master's status).
        self.sent = 0

    def poll(self, targets: Iterable[str], ids: Sequence[int] = ()) -> asyncio.Future[bool]:
        """Have these targets polled; the future says when the poll carrying them was sent.
        With no poll in flight it goes out now, before this returns, naming `ids`; never
        once closed."""
        if self._closed:
            never = asyncio.get_running_loop().create_future()
            never.set_result(False)
            return never
        self.pending.update(targets)
        if self._next_sent is None:
            self._next_sent = asyncio.get_running_loop().create_future()
        sent = self._next_sent
        if self._in_flight is None:
            self._send(ids)
        return sent

    def _send(self, ids: Sequence[int] = ()) -> None:
        """Hand the pending targets to the socket in one poll."""
        targets = sorted(self.pending)
        self.pending.clear()
        sent, self._next_sent = self._next_sent, None
        try:
            reply = self._request(targets, ids)
        except NoAnswer as exc:
            _resolve(sent, False)
            self._failed(targets, exc)
            return
        self.sent += 1
        _resolve(sent, True)
        self._in_flight = reply
        reply.add_done_callback(lambda done: self._replied(done, targets))

    def _replied(self, reply: asyncio.Future[Any], targets: list[str]) -> None:
        """The poll in flight was answered (or failed): send what was poked meanwhile."""
        self._in_flight = None
        if reply.cancelled():
            return  # closed
        exc = reply.exception()
        if isinstance(exc, NoAnswer | RequestError):
            self._failed(targets, exc)
        elif exc is not None:
            log.error("poll to %s failed: %r", self.name, exc)
        if self.pending and not self._closed:
            self._send()

    async def close(self) -> None:
        """Stop; pokes still waiting for a poll to this worker are told it was not sent."""
        self._closed = True
        if self._in_flight is not None:
            self._in_flight.cancel()
            self._in_flight = None
        if self._next_sent is not None:
            _resolve(self._next_sent, False)
            self._next_sent = None
        self.pending.clear()


def _resolve(future: asyncio.Future[bool] | None, value: bool) -> None:
    if future is not None and not future.done():
        future.set_result(value)
