"""The wire protocol, spoken by a raw pyzmq + msgpack client (no jobd code on this side)."""

from __future__ import annotations

import msgpack
import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

import jobd

RAW_TIMEOUT_MS = 5000


@pytest.fixture
def raw(start_worker):
    """A REQ-less raw DEALER socket to a running worker: send(frames) -> reply map."""
    worker = start_worker({"t": 1, "v": {"low": 1}})
    ctx = zmq.Context()
    sockets = []

    def connect():
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, RAW_TIMEOUT_MS)
        sock.connect(worker.address)
        sockets.append(sock)
        return sock

    class Raw:
        address = worker.address
        sock = connect()

        def send_frame(self, frame: bytes) -> dict:
            self.sock.send(frame)
            return msgpack.unpackb(self.sock.recv(), strict_map_key=False)

        def request(self, message) -> dict:
            return self.send_frame(msgpack.packb(message))

        new_socket = staticmethod(connect)

    yield Raw()
    for sock in sockets:
        sock.close()
    ctx.term()


def test_raw_client_gets_replies(raw):
    assert raw.request({"no": 7, "type": "ping", "data": {}}) == {
        "no": 7,
        "data": {"name": "w0", "version": jobd.__version__},
    }
    assert raw.request({"no": 1, "type": "ping"}) == {  # data may be left out
        "no": 1,
        "data": {"name": "w0", "version": jobd.__version__},
    }
    reply = raw.request({"no": 8, "type": "poll", "data": {"targets": ["t"]}})
    assert reply == {"no": 8, "data": {"targets": ["t"]}}


def test_req_socket_envelope_is_carried_back(raw):
    ctx = zmq.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, RAW_TIMEOUT_MS)
    req.connect(raw.address)
    try:
        req.send(msgpack.packb({"no": 1, "type": "status", "data": {}}))
        reply = msgpack.unpackb(req.recv(), strict_map_key=False)
        assert reply["no"] == 1 and reply["data"]["name"] == "w0"
    finally:
        req.close()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"no": 1, "type": "launch-missiles", "data": {}}, "unknown_request"),
        ({"no": 1, "type": "poll", "data": {"targets": "t"}}, "bad_request"),
        ({"no": 1, "type": "poll", "data": {"targets": [1, 2]}}, "bad_request"),
        ({"no": 1, "type": "poll", "data": {"targets": ["x' OR 1=1 --"]}}, "bad_request"),
        ({"no": 1, "type": "poll", "data": {"targets": ["a" * 17]}}, "bad_request"),
        ({"no": 1, "type": "poll", "data": {"target": ["t"]}}, "bad_request"),
        ({"no": 1, "type": "poll", "data": ["t"]}, "bad_request"),
        ({"no": 1, "type": "poll", "data": {"targets": ["nope"]}}, "not_found"),
        ({"no": 1, "type": "poll", "data": {"targets": ["t"], "ids": []}}, "bad_request"),
        ({"no": 1, "type": "poll", "data": {"targets": ["t"], "ids": ["7"]}}, "bad_request"),
        ({"no": 1, "type": "poll", "data": {"targets": ["t"], "ids": [0]}}, "bad_request"),
        ({"no": 1, "type": "poll", "data": {"targets": ["t"], "ids": 7}}, "bad_request"),
        ({"no": 1, "type": "run-manual", "data": {}}, "bad_request"),
        ({"no": 1, "type": "run-manual", "data": {"ids": [1.5]}}, "bad_request"),
        ({"no": 1, "type": "run-manual", "data": {"ids": [True]}}, "bad_request"),
        ({"no": 1, "type": "add-target", "data": {"target": "n", "slots": 0}}, "bad_request"),
        ({"no": 1, "type": "add-target", "data": {"target": "t", "slots": 1}}, "conflict"),
        ({"no": 1, "type": "remove-target", "data": {"target": "zz"}}, "not_found"),
        (
            {"no": 1, "type": "set-target-concurrency", "data": {"target": "t", "concurrency": -1}},
            "bad_request",
        ),
        ({"no": 1, "type": "send-signal", "data": {"jobs": {"1": "SIGNOPE"}}}, "bad_request"),
        ({"no": 1, "type": "send-signal", "data": {"jobs": []}}, "bad_request"),
        ({"no": "1", "type": "ping"}, "bad_request"),
        ({"type": "ping"}, "bad_request"),
        ({"no": 1, "type": 5}, "bad_request"),
    ],
)
def test_malformed_requests_get_error_codes(raw, message, code):
    reply = raw.request(message)
    assert reply["code"] == code, reply
    assert isinstance(reply["error"], str) and reply["error"]
    assert "data" not in reply
    # ...and the worker keeps serving.
    assert raw.request({"no": 2, "type": "ping"})["data"]["name"] == "w0"


@pytest.mark.parametrize(
    "frame",
    [b"\xc1", b"", b"\x92\x01", msgpack.packb([1, 2, 3]), msgpack.packb("ping"), b"\xde\xff"],
)
def test_undecodable_frames_get_bad_request(raw, frame):
    reply = raw.send_frame(frame)
    assert reply["code"] == "bad_request"
    assert raw.request({"no": 3, "type": "ping"})["data"]["name"] == "w0"


def test_oversized_message_is_refused_by_the_socket(raw):
    big = raw.new_socket()
    big.send(msgpack.packb({"no": 0, "type": "ping"}))
    assert msgpack.unpackb(big.recv())["no"] == 0  # connected, and answered
    monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        big.send(msgpack.packb({"no": 1, "type": "poll", "data": {"x": "y" * (2 << 20)}}))
        # The worker's socket drops the connection the message came on...
        assert monitor.poll(RAW_TIMEOUT_MS), "the connection was not dropped"
        assert parse_monitor_message(monitor.recv_multipart())["event"] == zmq.EVENT_DISCONNECTED
    finally:
        big.disable_monitor()
        monitor.close()
    # ...so no reply to it can come: the first reply on this socket, once it has
    # reconnected, is the next request's.
    big.send(msgpack.packb({"no": 2, "type": "ping"}))
    assert msgpack.unpackb(big.recv())["no"] == 2
    assert raw.request({"no": 4, "type": "ping"})["data"]["name"] == "w0"
