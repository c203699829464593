"""Fake workers for the scale benchmark: one process holding many DEALER sockets, each
registered with jobd-master as a worker of its own.

    python bench/fake_workers.py --master ADDR --report ADDR --assignment FILE NAME...

Each fake worker does what jobd/master_link.py does on the wire, with the same code: a
DEALER socket whose identity is NAME/RANDOM (master_link.routing_id), connected to the
master, answering the master's requests with jobd.wire.endpoint and jobd.wire.dispatch over the
protocol's own request table, and registering with `register-worker` (its targets, each
one slot `default` of concurrency 1, from the assignment file: {name: [target, ...]}).
It answers `ping` and `poll`; any other request gets an error.  It runs no jobs and has
no database.

For each `poll` it receives it takes the time (CLOCK_MONOTONIC, shared by every process
of the host) before anything else and sends [name, time in ns, targets] as one msgpack
frame over a PUSH socket to --report, where the benchmark waits for them.

Prints `ready` once every fake worker of the process is registered; on SIGTERM or SIGINT
each unregisters and the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from jobd import __version__
from jobd.wire import protocol
from jobd.wire.dispatch import Dispatcher
from jobd.wire.endpoint import Endpoint, NoAnswer, configure_socket
from jobd.wire.protocol import ErrorCode, RequestError
from jobd.worker.master_link import routing_id

log = logging.getLogger("fake_workers")


class FakeWorker:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        name: str,
        targets: list[str],
        master: str,
        report: zmq.Socket,
    ) -> None:
        self.name = name
        self.targets = targets
        self.report = report
        sock = ctx.socket(zmq.DEALER)
        configure_socket(sock)
        sock.setsockopt(zmq.IDENTITY, routing_id(name))
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(master)
        handlers: dict[str, Any] = dict.fromkeys(protocol.WORKER_REQUESTS, self.unsupported)
        handlers.update(ping=self.ping, poll=self.poll)
        dispatcher = Dispatcher(protocol.WORKER_REQUESTS, handlers, log)
        self.endpoint = Endpoint(sock, dispatcher, log)
        self.registered = False

    # Plain handlers, answered as the request is read, as jobd's worker answers these two.
    def ping(self, data: dict[str, Any]) -> Any:
        return {"name": self.name, "version": __version__}

    def poll(self, data: dict[str, Any]) -> Any:
        now = time.monotonic_ns()
        targets = data["targets"] or self.targets
        # A plain PUSH socket: the send returns at once (or drops, never blocks the reply).
        with contextlib.suppress(zmq.Again):
            self.report.send(msgpack.packb([self.name, now, targets]), flags=zmq.DONTWAIT)
        return {"targets": targets}

    async def unsupported(self, data: dict[str, Any]) -> Any:
        raise RequestError(ErrorCode.UNKNOWN_REQUEST, "a fake worker answers ping and poll only")

    async def register(self) -> None:
        self.endpoint.start()
        data = {
            "name": self.name,
            "targets": {target: {"default": 1} for target in self.targets},
            "version": __version__,
            "listen": "",
        }
        for _ in range(20):
            try:
                await self.endpoint.request("register-worker", data, timeout=3)
                self.registered = True
                return
            except NoAnswer:
                continue
        raise RuntimeError(f"{self.name}: the master does not answer register-worker")

    async def close(self) -> None:
        if self.registered:
            with contextlib.suppress(NoAnswer, RequestError):
                await self.endpoint.request("unregister-worker", {"name": self.name}, timeout=1)
        await self.endpoint.close()


async def serve(args: argparse.Namespace) -> None:
    assignment = json.loads(Path(args.assignment).read_text())
    ctx = zmq.asyncio.Context()
    report = zmq.Context.instance().socket(zmq.PUSH)
    report.setsockopt(zmq.LINGER, 1000)
    report.connect(args.report)
    fakes = [FakeWorker(ctx, name, assignment[name], args.master, report) for name in args.names]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await asyncio.gather(*(fake.register() for fake in fakes))
        print("ready", flush=True)
        await stop.wait()
    finally:
        await asyncio.gather(*(fake.close() for fake in fakes), return_exceptions=True)
        report.close()
        ctx.term()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--master", required=True, help="jobd-master endpoint")
    parser.add_argument("--report", required=True, help="PUSH endpoint for poll receipts")
    parser.add_argument("--assignment", required=True, help="JSON file {name: [target, ...]}")
    parser.add_argument("names", nargs="+", help="names of the fake workers of this process")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s fake_workers %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
