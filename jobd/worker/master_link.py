"""The worker's side of its connection to jobd-master.

The worker connects one DEALER socket to the master's ROUTER, registers over it, and
then answers the master's requests (poll, ping, pause, status, run-manual, ...) on that
same socket with the very dispatcher and handlers that serve its own listen socket.

Routing id.  The socket's ZeroMQ identity is `<name>/<random hex>`, not the bare name:
a ROUTER silently ignores a second connection whose identity is already in use
(ZMQ_ROUTER_HANDOVER is off), so with the bare name a duplicate worker would never
hear that it was refused.  The master keys its registry by the logical `name` in the
register-worker data and answers a live duplicate with a `conflict` error.

When the worker registers:
  * when the link starts;
  * on every (re)connection: a socket monitor reports each completed handshake, so a
    restarted master has every worker back as soon as it accepts connections;
  * whenever the targets change (Worker.on_targets_changed);
  * when the master has been silent (no ping, no request) for MISSED_PINGS intervals:
    it is treated as gone and registration is retried every interval until it answers.
The ping interval is learnt from the register-worker reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from jobd.runtime.backoff import Backoff
from jobd.wire import protocol
from jobd.wire.curve import ClientCurve, make_client
from jobd.wire.dispatch import Dispatcher
from jobd.wire.endpoint import Endpoint, NoAnswer, configure_socket
from jobd.wire.protocol import RequestError
from jobd.worker.worker import Worker

log = logging.getLogger("jobd.master_link")

#: The master is treated as gone after this many ping intervals without hearing from it
#: (it drops a worker after the same number of missed pings).
MISSED_PINGS = 3
#: Until the first reply tells the real interval, assume the master's default.
DEFAULT_PING_INTERVAL = 5.0
#: ZMTP heartbeat period on the connection to the master, in milliseconds.
HEARTBEAT_MS = 2000
#: Longest pause between registrations the master refused (conflict), in seconds.
MAX_REFUSED_RETRY = 60.0
#: Most job events in one job-events message (the protocol allows MAX_EVENTS).
EVENTS_PER_MESSAGE = 500
#: Seconds the events of a moment gather before they go out in one message: under load,
#: one message carries the events of many jobs (not one a loop turn), and a job just
#: spawned has the CPU to itself for its first milliseconds rather than sharing it with a
#: message to the master and the master's publishing.
EVENTS_COALESCE = 0.005


#: Monitor events of a handshake that failed (CURVE keys refused, mechanism mismatch).
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def _reason(event: dict[str, Any]) -> str:
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"our key was not accepted (ZAP status {event['value']})"
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return "protocol error: are CURVE keys configured on one side only?"
    return "no detail: a wrong server key, or CURVE on one side only"


def routing_id(name: str) -> bytes:
    """A ZeroMQ identity unique to this connection, still readable in the master's logs."""
    return f"{name}/{secrets.token_hex(4)}".encode()


class MasterLink:
    def __init__(
        self,
        worker: Worker,
        address: str,
        ctx: zmq.asyncio.Context,
        curve: ClientCurve | None = None,
    ) -> None:
        self.worker = worker
        self.address = address
        self.name = worker.config.name
        self.identity = routing_id(self.name)
        self.ping_interval = DEFAULT_PING_INTERVAL
        self.registered = False
        self.last_heard = time.monotonic()
        sock = ctx.socket(zmq.DEALER)
        configure_socket(sock)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        # Attach the pipe only once connected: nothing is queued for a master that is not
        # there, so a restarted master never receives stale replies meant for its
        # predecessor, and a request sent while disconnected waits (bounded by our timeout).
        sock.setsockopt(zmq.IMMEDIATE, 1)
        # ZMTP heartbeats: a connection that died silently (no RST) is dropped and redialled,
        # and the reconnection registers again.  The master's libzmq answers them by itself.
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * HEARTBEAT_MS)
        if curve is not None:
            # The master proves itself with the secret of curve.server_public, and lets
            # us in only if our public key is among its authorized keys.
            make_client(sock, curve)
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED
        )
        self._handshake_failed = False
        self.connected = False
        sock.connect(address)
        dispatcher = Dispatcher(protocol.WORKER_REQUESTS, worker.handlers, log)
        self.endpoint = Endpoint(sock, dispatcher, log, on_request=self._heard_request)
        self._register_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Job events gathered for the next job-events message (EVENTS_COALESCE).
        self._events: list[dict[str, Any]] = []
        self._events_timer: asyncio.TimerHandle | None = None
        self.events_sent = 0
        self.events_dropped = 0
        self._dropping_since = 0  # events_dropped when the current outage began
        self._dropping = False

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self.endpoint.start()
        self.worker.on_targets_changed = self.register
        self.worker.aftermath.on_event = self._event
        self._tasks = [
            asyncio.create_task(self._watch_connections(), name="master-monitor"),
            asyncio.create_task(self._watch_liveness(), name="master-liveness"),
        ]
        self.register()
        log.info("connecting to master %s as %s", self.address, self.identity.decode())

    async def close(self) -> None:
        """Unregister (briefly: the master may be gone) and close the connection."""
        self.worker.on_targets_changed = None
        self.worker.aftermath.on_event = None
        if self._events_timer is not None:
            self._events_timer.cancel()
            self._send_events()  # the last outcomes' events, before unregistering
        for task in [*self._tasks, self._register_task]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.registered and self.connected:
            # Lets the master stop routing to us at once instead of after missed pings.
            with contextlib.suppress(NoAnswer, RequestError, TimeoutError):
                await asyncio.wait_for(
                    self.endpoint.request(
                        "unregister-worker", {"name": self.name}, timeout=self.ping_interval
                    ),
                    min(self.ping_interval, 1.0),
                )
        self.registered = False
        self._monitor.close(linger=0)
        await self.endpoint.close()

    # --- registration -------------------------------------------------------------

    def register(self) -> None:
        """(Re)register now; an attempt still in flight is replaced (its data may be stale)."""
        if self._register_task is not None:
            self._register_task.cancel()
        self._register_task = asyncio.create_task(self._register(), name="master-register")

    async def _register(self) -> None:
        # Before the first reply the interval is only a guess; start retries soon anyway.
        refused = Backoff(min(self.ping_interval, 1.0), MAX_REFUSED_RETRY)
        while True:
            data = self.worker.registration()
            try:
                # wait_for also bounds the send, which waits while there is no connection.
                reply = await asyncio.wait_for(
                    self.endpoint.request("register-worker", data, timeout=None),
                    self.ping_interval,
                )
            except TimeoutError:
                self._unanswered()
                continue  # the wait was the pause; try again
            except NoAnswer as exc:  # the socket refused the message
                self._unanswered()
                log.debug("registration not sent: %s", exc)
                await asyncio.sleep(self.ping_interval)
                continue
            except RequestError as exc:
                self.registered = False
                # A refusal (above all a name conflict) needs an operator: say so loudly,
                # then try again from time to time, in case the other worker goes away.
                delay = refused.next()
                log.error(
                    "master %s refused registration of %s (%s): %s; retrying in %.0f s",
                    self.address, self.name, exc.code, exc.message, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                continue
            self._registered(reply, data)
            return

    def _unanswered(self) -> None:
        if self.registered:
            log.warning("master %s did not answer the registration", self.address)
        self.registered = False

    def _registered(self, reply: object, data: dict[str, Any]) -> None:
        interval = reply.get("ping_interval") if isinstance(reply, dict) else None
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            self.ping_interval = float(interval)
        if not self.registered:
            targets = ", ".join(data["targets"]) or "none"
            log.info(
                "registered with master %s (ping interval %g s), targets %s",
                self.address, self.ping_interval, targets,
            )  # fmt: skip
        else:
            log.info("registration with master %s updated", self.address)
        self.registered = True
        self.last_heard = time.monotonic()

    def poke(self, targets: list[str]) -> None:
        """Ask the master to poke these targets (this worker's scheduler fired), without
        waiting for it: the worker has polled itself already."""
        if self.registered and self.connected:
            self.endpoint.try_send("poke", {"targets": targets})

    # --- job events ---------------------------------------------------------------

    def _event(self, event: dict[str, Any]) -> None:
        """Worker.on_event: gather the events of EVENTS_COALESCE; they go out together."""
        if self._events_timer is None:
            self._events_timer = asyncio.get_running_loop().call_later(
                EVENTS_COALESCE, self._send_events
            )
        self._events.append(event)

    def _send_events(self) -> None:
        """Fire and forget: a job never waits for its events.  While the master is away
        (or its queue is full) they are dropped and counted; subscribers who must not
        miss an outcome read the row (jobd.client does)."""
        self._events_timer = None
        events, self._events = self._events, []
        for i in range(0, len(events), EVENTS_PER_MESSAGE):
            chunk = events[i : i + EVENTS_PER_MESSAGE]
            sendable = self.registered and self.connected
            if sendable and self.endpoint.try_send("job-events", {"events": chunk}):
                self.events_sent += len(chunk)
                if self._dropping:
                    self._dropping = False
                    log.info(
                        "job events reach master %s again (%d dropped meanwhile)",
                        self.address, self.events_dropped - self._dropping_since,
                    )  # fmt: skip
                continue
            if not self._dropping:
                self._dropping = True
                self._dropping_since = self.events_dropped
                # Before the first registration this is expected: say it quietly.
                log.log(
                    logging.WARNING if self.events_sent else logging.INFO,
                    "master %s cannot take job events now; dropping them (jobs go on)",
                    self.address,
                )
            self.events_dropped += len(chunk)

    # --- watching the master ------------------------------------------------------

    def _heard_request(self, envelope: Sequence[bytes]) -> None:
        self.last_heard = time.monotonic()

    async def _watch_connections(self) -> None:
        """Register on every completed handshake: a reconnection may be a new master."""
        first = True
        while True:
            try:
                event = parse_monitor_message(await self._monitor.recv_multipart())
            except zmq.ZMQError:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = False
            elif event["event"] & HANDSHAKE_FAILED:
                # Once per run of failures: libzmq redials every 100 ms.
                if not self._handshake_failed:
                    log.error(
                        "the master %s refused the connection (security handshake failed: %s);"
                        " check the curve keys on both sides", self.address, _reason(event),
                    )  # fmt: skip
                self._handshake_failed = True
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
                self._handshake_failed = False
                if first:
                    first = False  # the initial registration is already under way
                    continue
                log.info("reconnected to master %s; registering again", self.address)
                self.register()

    async def _watch_liveness(self) -> None:
        """Treat a master silent for MISSED_PINGS intervals as gone, and register again."""
        while True:
            # Re-read each round: the interval is learnt from the first registration reply.
            await asyncio.sleep(min(self.ping_interval / 2, 1.0))
            silent = time.monotonic() - self.last_heard
            if self.registered and silent > MISSED_PINGS * self.ping_interval:
                log.warning(
                    "no word from master %s for %.1f s; registering again", self.address, silent
                )
                self.registered = False
                self.register()
