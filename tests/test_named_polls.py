"""Pokes that name their rows, beside daemons of jobd 0.1 (whose request tables have no
`ids`): the master names rows only to workers that take them, and the client pokes
again without them when a daemon refuses the field."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import zmq
import zmq.asyncio

from jobd import __version__
from jobd.client import AsyncJobd
from jobd.wire.dispatch import Dispatcher
from jobd.wire.endpoint import Endpoint, bind_router, configure_socket
from jobd.wire.protocol import (
    MASTER_REQUESTS,
    WORKER_REQUESTS,
    ErrorCode,
    Field,
    RequestError,
    RequestType,
    check_names,
)
from jobd.worker.master_link import routing_id

from conftest import free_port

log = logging.getLogger("test")


def without_ids(table: dict[str, RequestType], request: str) -> dict[str, RequestType]:
    """The table of a jobd 0.1 daemon: `request` takes targets only."""
    return {**table, request: RequestType(request, {"targets": Field(check_names)})}


def endpoint(sock: zmq.asyncio.Socket, table: dict[str, RequestType], **handlers: Any) -> Endpoint:
    """Answers `handlers` (plain functions) over `sock`; any other request is refused."""

    async def refuse(data: dict[str, Any]) -> Any:
        raise RequestError(ErrorCode.UNKNOWN_REQUEST, "not in this test")

    answers: dict[str, Any] = dict.fromkeys(table, refuse) | handlers
    point = Endpoint(sock, Dispatcher(table, answers, log), log)
    point.start()
    return point


def test_the_master_names_rows_only_to_workers_that_take_ids(jobs, start_master):
    master = start_master()
    polls, status = asyncio.run(poke_old_and_new_workers(master, jobs))
    assert polls == {
        "old": [{"targets": ["t"]}, {"targets": ["t"]}],
        "new": [{"targets": ["t"], "ids": [7]}, {"targets": ["t"], "ids": ()}],  # none named
    }
    # A poll that failed (the old worker refusing `ids`) would have left t remembered for
    # the next worker; the second polls went out only once the first were answered.
    assert status["remembered"] == []
    assert {name: w["polls_sent"] for name, w in status["workers"].items()} == {
        "old": 2, "new": 2,
    }  # fmt: skip


async def poke_old_and_new_workers(master, jobs) -> tuple[dict[str, list[dict]], dict]:
    """Two workers on raw sockets, of jobd 0.1 and of this version, registered for t; a
    poke naming a row, then one naming none: the polls each received, and the master's
    status once each had both (a worker's next poll goes out only once its last poll is
    answered or has failed)."""
    ctx = zmq.asyncio.Context()
    polls: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    workers = []
    try:
        for name, version, table in (
            ("old", "0.1.0", without_ids(WORKER_REQUESTS, "poll")),
            ("new", __version__, WORKER_REQUESTS),
        ):
            sock = ctx.socket(zmq.DEALER)
            configure_socket(sock)
            sock.setsockopt(zmq.IDENTITY, routing_id(name))
            sock.connect(master.address)

            def poll(data: dict[str, Any], name: str = name) -> Any:
                polls[name].append(data)
                return {"targets": data["targets"]}

            workers.append(endpoint(sock, table, poll=poll))
            registration = {"name": name, "targets": {"t": {"default": 1}}, "version": version}
            await workers[-1].request("register-worker", registration, timeout=5)
        async with AsyncJobd(jobs.db.url_string, table=jobs.table, master=master.address) as jobd:
            reply = await jobd.poke(["t"], [7])
            assert sorted(reply["workers"]) == ["new", "old"]
            await until(lambda: polls["old"] and polls["new"])
            reply = await jobd.poke(["t"])
            assert sorted(reply["workers"]) == ["new", "old"]
            await until(lambda: len(polls["old"]) == len(polls["new"]) == 2)
        status = await workers[0].request("status", {"poll_workers": False}, timeout=5)
        return polls, status
    finally:
        for worker in workers:
            await worker.close()
        ctx.term()


async def until(condition: Any, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting for the polls")


async def test_the_client_pokes_again_without_ids_a_daemon_that_refuses_them(jobs):
    ctx = zmq.asyncio.Context()
    address = f"tcp://127.0.0.1:{free_port()}"
    pokes: list[dict[str, Any]] = []

    def poke(data: dict[str, Any]) -> Any:
        pokes.append(data)
        return {"workers": ["w"], "unserved": []}

    old_master = endpoint(
        bind_router(ctx, address), without_ids(MASTER_REQUESTS, "poke"), poke=poke
    )
    try:
        async with AsyncJobd(jobs.db.url_string, table=jobs.table, master=address) as jobd:
            assert await jobd.poke(["t"], [7]) == {"workers": ["w"], "unserved": []}
        assert pokes == [{"targets": ["t"]}]  # the one with ids was refused before its handler
    finally:
        await old_master.close()
        ctx.term()
