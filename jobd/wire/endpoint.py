"""Requests and replies over one ZeroMQ socket, in both directions.

An `Endpoint` owns one socket (a ROUTER a daemon binds, or a DEALER that connects):
it answers incoming requests with a `Dispatcher` (jobd.wire.dispatch) and matches
incoming replies to the requests it sent itself.  The worker, the master and the
client all use it, so the framing lives in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio

from jobd.wire import protocol
from jobd.wire.curve import KeyPair, make_server
from jobd.wire.dispatch import Dispatcher, request_envelope
from jobd.wire.protocol import ErrorCode, RequestError

#: Called with the envelope (ROUTER identity frames) of each incoming request.
PeerHook = Callable[[Sequence[bytes]], None]


#: Seconds between warnings about replies dropped for peers that do not read them.
DROPPED_LOG_INTERVAL = 60.0
#: Requests being answered at once (each a task); past it, new requests are refused
#: with `unavailable` ("busy") at once.  Far above real use (a burst of 10,000 pokes all
#: waiting for one poll stays under it), so that only a flood meets it, and its memory
#: stays bounded.  Replies are always read: the master's handlers wait for them.
MAX_IN_FLIGHT = 20_000
#: Messages read in a row before the loop lets the answering tasks run (a burst read whole
#: lets the master gather its pokes into few polls; the tasks hold only checked data).
YIELD_EVERY = 1000


class NoAnswer(Exception):
    """The peer did not answer in time (or could not be reached)."""


def configure_socket(sock: zmq.Socket, max_message_size: int = protocol.MAX_MESSAGE_SIZE) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)


class Endpoint:
    """One socket: answers requests through a dispatcher, and sends requests of its own."""

    def __init__(
        self,
        sock: zmq.asyncio.Socket,
        dispatcher: Dispatcher | None,
        log: logging.Logger,
        on_request: PeerHook | None = None,
        first_number: int = 1,
    ) -> None:
        self.sock = sock
        self.dispatcher = dispatcher
        self.log = log
        self.on_request = on_request
        # A daemon that restarts may start its numbering elsewhere, so a late reply meant
        # for its previous life never matches one of its new requests.
        self._numbers = itertools.count(first_number)
        #: Requests awaiting a reply: number -> (the envelope it went to, the future of
        #: the reply's data, which fails with RequestError for an error reply).
        self._pending: dict[int, tuple[tuple[bytes, ...], asyncio.Future[Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        # Sends that must not wait go through a plain socket on the same libzmq socket:
        # pyzmq's asyncio send re-reads the socket's events after every message (its
        # descriptor is edge-triggered), which costs more than the send itself when the
        # master polls dozens of workers at once.  Here they are re-read once a loop turn
        # through the asyncio socket's own `get(EVENTS)`, which wakes its readers.
        self._plain = zmq.Socket.shadow(sock.underlying)
        self._events_check: asyncio.Handle | None = None
        #: Sends waiting in the asyncio socket for room: a plain send must not pass them.
        self._sends_waiting = 0
        self.dropped_replies = 0
        self._dropped_logged = -DROPPED_LOG_INTERVAL

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop())

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for task in list(self._tasks):
            task.cancel()
        for _, future in self._pending.values():
            future.cancel()
        if self._events_check is not None:
            self._events_check.cancel()
        self.sock.close(linger=0)

    async def _read_loop(self) -> None:
        burst = 0
        while True:
            try:
                frames = await self.sock.recv_multipart(copy=True)
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                self.log.warning("receive failed: %s", exc)
                continue
            self._received(frames)
            # Awaiting a message that is already there does not yield: without this, a
            # flood would be read (and its tasks made) before any of them could run.
            burst += 1
            if burst >= YIELD_EVERY:
                burst = 0
                await asyncio.sleep(0)

    def _received(self, frames: list[bytes]) -> None:
        envelope, payload = frames[:-1], frames[-1]
        try:
            message = protocol.decode(payload)
        except RequestError as exc:
            self._send_now(envelope, protocol.error_message(None, exc.code, exc.message))
            return
        if protocol.is_reply(message):
            self._reply(tuple(envelope), message)
            return
        if self.dispatcher is None:
            return  # a plain client does not answer requests
        if len(self._tasks) >= MAX_IN_FLIGHT:
            # A flood: refuse at once rather than stop reading, which would also stop the
            # replies this daemon waits for on the same socket (the master's polls).
            no = protocol.request_no(message)
            self._send_now(envelope, protocol.error_message(no, ErrorCode.UNAVAILABLE, "busy"))
            return
        if self.on_request is not None:
            self.on_request(envelope)
        request_envelope.set(tuple(envelope))
        # Checked here, before the next message is read: only the clean data lives on in
        # the task, so a burst of big messages never holds more than one decoded at once
        # (a message decodes to many times its size in objects).
        parsed = self.dispatcher.parse(message)
        del message
        if isinstance(parsed, dict):
            self._send_now(envelope, parsed)
        else:
            # The handler runs now, before the next message is read: a plain one answers
            # with no task and no turn of the event loop (a poll's claim starts one turn
            # sooner, and so does the poll a poke relays); what must wait gets a task.
            reply = self.dispatcher.start(*parsed)
            if isinstance(reply, dict):
                self._send_now(envelope, reply)
            else:
                self._spawn(self._answer(envelope, reply))

    def _reply(self, envelope: tuple[bytes, ...], message: dict[str, Any]) -> None:
        no = message["no"]
        pending = self._pending.get(no) if _hashable(no) else None
        # Only the peer a request went to may answer it: on the master's ROUTER, shared by
        # workers and clients, anyone could otherwise answer a request meant for a worker.
        if pending is None or pending[0] != envelope:
            self.log.debug("unexpected reply #%s dropped", protocol.short(no))
            return
        del self._pending[no]
        future = pending[1]
        if future.done():
            return
        if "error" in message:
            code = str(message.get("code", ErrorCode.INTERNAL))
            future.set_exception(RequestError(code, str(message["error"])))
        else:
            future.set_result(message.get("data"))

    async def _answer(self, envelope: list[bytes], reply: Awaitable[dict[str, Any]]) -> None:
        self._send_now(envelope, await reply)

    def _send_at_once(self, frames: list[bytes]) -> None:
        """Send now or raise zmq.ZMQError (zmq.Again: the peer's queue is full, or no
        peer to send to).  The one place a message leaves without waiting."""
        if self._sends_waiting:
            # Behind sends that wait for room, through the asyncio socket (which keeps
            # the order); with DONTWAIT its future is settled at once.
            future = self.sock.send_multipart(frames, flags=zmq.DONTWAIT)
            if future.done():
                if not future.cancelled() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            else:
                future.add_done_callback(_consume)
            return
        self._plain.send_multipart(frames, flags=zmq.DONTWAIT)
        if self._events_check is None:
            self._events_check = asyncio.get_running_loop().call_soon(self._check_events)

    def _check_events(self) -> None:
        """After plain sends: the asyncio socket's `get(EVENTS)` wakes its readers if a
        message arrived while the sends used up the descriptor's edge."""
        self._events_check = None
        if not self.sock.closed:
            self.sock.get(zmq.EVENTS)

    def _send_now(self, envelope: Sequence[bytes], message: Mapping[str, Any]) -> None:
        """Send a reply now or never: a peer whose queue is full (SNDHWM) does not read
        its replies, and waiting for it would pile up tasks and memory for every request
        it sends and stall the socket for everyone else."""
        try:
            self._send_at_once([*envelope, protocol.encode(message)])
        except zmq.ZMQError as exc:
            self._not_sent(exc)

    def _not_sent(self, exc: BaseException | None) -> None:
        if isinstance(exc, zmq.Again):
            self._reply_dropped()
        else:
            # The peer went away (ROUTER_MANDATORY) or the socket is closing.
            self.log.debug("reply not sent: %s", exc)

    def _reply_dropped(self) -> None:
        self.dropped_replies += 1
        now = time.monotonic()
        if now - self._dropped_logged >= DROPPED_LOG_INTERVAL:  # a flood must not flood the log
            self._dropped_logged = now
            self.log.warning(
                "a peer does not read its replies; dropping them (%d so far)",
                self.dropped_replies,
            )

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)

    async def request(
        self,
        type_: str,
        data: Mapping[str, Any] | None = None,
        *,
        envelope: Sequence[bytes] = (),
        timeout: float | None = None,
    ) -> Any:
        """Send a request and wait for its reply.

        Returns the reply's data; raises RequestError for an error reply and NoAnswer on timeout.
        """
        no = next(self._numbers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[no] = (tuple(envelope), future)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            message = protocol.encode(protocol.request_message(no, type_, data))
            sent = self.sock.send_multipart([*envelope, message])
            # The timeout covers the send too: a DEALER without a pipe to its peer (a
            # CURVE handshake refused before the first send) would wait there for ever.
            if not sent.done():
                self._sends_waiting += 1
                try:
                    await asyncio.wait_for(sent, _left(deadline, loop))
                finally:
                    self._sends_waiting -= 1
            sent.result()  # raises the send's error
            return await asyncio.wait_for(future, _left(deadline, loop))
        except zmq.ZMQError as exc:
            raise NoAnswer(f"cannot send: {exc}") from None
        except TimeoutError:
            raise NoAnswer(f"no answer within {timeout:g} s") from None
        finally:
            self._pending.pop(no, None)

    def send_request(
        self,
        type_: str,
        data: Mapping[str, Any] | None = None,
        *,
        envelope: Sequence[bytes] = (),
        timeout: float,
    ) -> asyncio.Future[Any]:
        """Hand a request to the socket now, with no turn of the event loop before it (a
        turn adds to the latency of every poke the master relays), and return the future
        of the reply's data, which fails as `request` does.  Raises NoAnswer at once when
        the socket cannot take the message (no such peer, its queue full)."""
        no = next(self._numbers)
        message = protocol.encode(protocol.request_message(no, type_, data))
        try:
            self._send_at_once([*envelope, message])
        except zmq.ZMQError as exc:
            raise NoAnswer(f"cannot send: {exc}") from None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[no] = (tuple(envelope), future)
        timer = loop.call_later(timeout, _fail, future, NoAnswer(f"no answer within {timeout:g} s"))

        def settled(_: asyncio.Future[Any]) -> None:
            timer.cancel()
            self._pending.pop(no, None)

        future.add_done_callback(settled)
        return future

    def try_send(self, type_: str, data: Mapping[str, Any] | None = None) -> bool:
        """Send a request whose reply nobody waits for, now or never: False when the socket
        cannot take it at once (no connected peer, its queue full).  Never blocks."""
        no = next(self._numbers)
        message = protocol.encode(protocol.request_message(no, type_, data))
        try:
            self._send_at_once([message])
        except zmq.ZMQError:
            return False
        return True


def _left(deadline: float | None, loop: asyncio.AbstractEventLoop) -> float | None:
    """Seconds until `deadline` (None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - loop.time())


def _fail(future: asyncio.Future[Any], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved


def _hashable(value: Any) -> bool:
    return isinstance(value, int | str | None)


def bind_router(
    ctx: zmq.asyncio.Context, endpoint: str, curve: KeyPair | None = None
) -> zmq.asyncio.Socket:
    """A ROUTER socket bound at `endpoint`, a CURVE server with `curve` (the context's
    authenticator decides who may connect); raises zmq.ZMQError if it cannot bind."""
    sock = ctx.socket(zmq.ROUTER)
    configure_socket(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # Replies are sent now or never (Endpoint._send_now), and one poll sent can settle
    # thousands of pokes in one turn: a peer's queue holds the replies of as many
    # requests as the daemon works on at once, so only a peer that does not read loses
    # them (ZeroMQ's default high-water mark is far below a burst of pokes).
    sock.setsockopt(zmq.SNDHWM, MAX_IN_FLIGHT)
    return bind_server(sock, endpoint, curve)


def bind_server(
    sock: zmq.asyncio.Socket, endpoint: str, curve: KeyPair | None
) -> zmq.asyncio.Socket:
    """Bind a configured socket as a CURVE server with `curve` (None: plain); closes it and
    raises zmq.ZMQError if it cannot bind."""
    if curve is not None:
        make_server(sock, curve)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock
