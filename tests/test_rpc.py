"""jobd.rpc on its own: a fire-and-forget send never makes the reader miss a reply."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import msgpack
import pytest
import zmq
import zmq.asyncio

from jobd.wire import protocol
from jobd.wire.dispatch import Dispatcher
from jobd.wire.endpoint import Endpoint, NoAnswer, configure_socket
from jobd.wire.protocol import RequestError


def echo_server(box: list[int], stop: threading.Event) -> None:
    router = zmq.Context.instance().socket(zmq.ROUTER)
    box.append(router.bind_to_random_port("tcp://127.0.0.1"))
    router.RCVTIMEO = 100
    while not stop.is_set():
        try:
            ident, frame = router.recv_multipart()
        except zmq.Again:
            continue
        message = msgpack.unpackb(frame)
        if message["type"] == "ping":
            router.send_multipart([ident, msgpack.packb({"no": message["no"], "data": "pong"})])
    router.close(0)


@pytest.mark.timeout(60)
async def test_try_send_while_a_reply_waits_does_not_stall_the_reader():
    box: list[int] = []
    stop = threading.Event()
    threading.Thread(target=echo_server, args=(box, stop), daemon=True).start()
    while not box:
        time.sleep(0.01)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    configure_socket(sock, -1)
    sock.connect(f"tcp://127.0.0.1:{box[0]}")
    endpoint = Endpoint(sock, None, logging.getLogger("test"))
    endpoint.start()
    try:
        for _ in range(500):
            reply = asyncio.ensure_future(endpoint.request("ping", timeout=2))
            await asyncio.sleep(0)
            time.sleep(0.001)  # the reply arrives while the event loop is busy...
            assert endpoint.try_send("job-events", {"events": []})  # ...and this goes out
            assert await reply == "pong"  # a stall would be NoAnswer after 2 s
    finally:
        stop.set()
        await endpoint.close()
        ctx.term()


@pytest.mark.timeout(30)
async def test_send_request_hands_over_at_once_or_says_why_not():
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    configure_socket(router, -1)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, b"peer")
    peer.connect(f"tcp://127.0.0.1:{port}")
    endpoint = Endpoint(router, None, logging.getLogger("test"))
    endpoint.start()
    try:
        with pytest.raises(NoAnswer, match="cannot send"):
            endpoint.send_request("poll", envelope=[b"nobody"], timeout=1)  # no such peer
        await peer.send(msgpack.packb({"no": 0, "type": "ping"}))  # the peer is known now
        for _ in range(250):  # ... once its connection has reached the router
            try:
                reply = endpoint.send_request(
                    "poll", {"targets": ["t"]}, envelope=[b"peer"], timeout=5
                )
                break
            except NoAnswer:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("the peer never became routable")
        request = msgpack.unpackb(await asyncio.wait_for(peer.recv(), 5))  # already sent
        assert (request["type"], request["data"]) == ("poll", {"targets": ["t"]})
        await peer.send(msgpack.packb({"no": request["no"], "data": {"targets": ["t"]}}))
        assert await asyncio.wait_for(reply, 5) == {"targets": ["t"]}
        silent = endpoint.send_request("poll", envelope=[b"peer"], timeout=0.2)
        with pytest.raises(NoAnswer, match=r"no answer within 0\.2 s"):
            await silent  # the peer never answers this one
        assert not endpoint._pending  # nothing left waiting
    finally:
        await endpoint.close()
        peer.close(0)
        ctx.term()


@pytest.mark.timeout(30)
async def test_a_request_that_cannot_even_be_sent_times_out():
    # A DEALER with no pipe to a peer blocks in send: here nothing listens and IMMEDIATE
    # keeps it from queueing (as a CURVE handshake refused before the first send does).
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    configure_socket(sock, -1)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    sock.connect(f"tcp://127.0.0.1:{port}")
    endpoint = Endpoint(sock, None, logging.getLogger("test"))
    endpoint.start()
    try:
        began = time.monotonic()
        with pytest.raises(NoAnswer, match="no answer within"):
            await endpoint.request("ping", timeout=0.3)
        assert time.monotonic() - began < 5
        assert not endpoint._pending
    finally:
        await endpoint.close()
        ctx.term()


async def test_plain_handlers_answer_as_read_or_later_and_their_errors_are_replies():
    calls: list[str] = []

    def ping(data: dict) -> dict:
        calls.append("ping")
        return {"pong": True}

    def poll(data: dict) -> dict:
        raise RequestError("not_found", "no such target")

    async def status(data: dict) -> dict:
        raise ValueError("a bug")

    released = asyncio.Event()

    async def when_released(fail: bool) -> dict:
        await released.wait()
        if fail:
            raise RequestError("unavailable", "gave up waiting")
        return {"waited": True}

    def pause(data: dict) -> object:
        # A plain handler that must wait returns an awaitable: its reply comes later.
        return when_released(fail=False)

    def continue_(data: dict) -> object:
        return when_released(fail=True)

    handlers = dict.fromkeys(protocol.WORKER_REQUESTS, status)
    handlers.update(ping=ping, poll=poll, pause=pause, **{"continue": continue_})
    dispatcher = Dispatcher(protocol.WORKER_REQUESTS, handlers, logging.getLogger("test"))
    # Plain handlers give their reply at once; a coroutine handler, or a plain one that
    # must wait, gives its awaitable.
    assert dispatcher.start(90, "ping", {}) == protocol.reply_message(90, {"pong": True})
    calls.clear()
    pending = dispatcher.start(91, "status", {})
    assert not isinstance(pending, dict)
    assert (await pending)["code"] == "internal_error"

    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    configure_socket(router, -1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    peer = ctx.socket(zmq.DEALER)
    peer.connect(f"tcp://127.0.0.1:{port}")
    endpoint = Endpoint(router, dispatcher, logging.getLogger("test"))
    endpoint.start()
    try:
        await peer.send(protocol.encode(protocol.request_message(4, "pause", {})))
        await peer.send(protocol.encode(protocol.request_message(5, "continue", {})))
        for no, type_ in enumerate(("ping", "poll", "status"), 1):
            await peer.send(protocol.encode(protocol.request_message(no, type_, {})))
        replies = [msgpack.unpackb(await asyncio.wait_for(peer.recv(), 5)) for _ in range(3)]
        by_no = {r["no"]: r for r in replies}
        assert by_no[1]["data"] == {"pong": True} and calls == ["ping"]
        assert (by_no[2]["code"], by_no[2]["error"]) == ("not_found", "no such target")
        assert by_no[3]["code"] == "internal_error"  # the async handler's bug, logged
        # The waiting plain handlers have not answered, and did not hold up the others.
        assert len(endpoint._tasks) == 2
        released.set()
        later = [msgpack.unpackb(await asyncio.wait_for(peer.recv(), 5)) for _ in range(2)]
        by_no = {r["no"]: r for r in later}
        assert by_no[4]["data"] == {"waited": True}
        assert (by_no[5]["code"], by_no[5]["error"]) == ("unavailable", "gave up waiting")
        await asyncio.sleep(0)
        assert not endpoint._tasks  # no task is left behind
    finally:
        await endpoint.close()
        peer.close(0)
        ctx.term()
