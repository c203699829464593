"""Running jobd-master as a process: bind, serve, stop on a signal, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal

import zmq
import zmq.asyncio

from jobd import __version__, protocol
from jobd.config import ConfigError, MasterConfig, load_master_config
from jobd.daemon import notify_systemd, watchdog
from jobd.rpc import Dispatcher, Endpoint, bind_router
from jobd_master.master import Master

log = logging.getLogger("jobd_master")


class StartupError(Exception):
    """The master cannot run with this setup (exit status 2)."""


async def run_master(config: MasterConfig) -> int:
    ctx = zmq.asyncio.Context()
    try:
        sock = bind_router(ctx, config.listen)
    except zmq.ZMQError as exc:
        ctx.term()
        raise StartupError(f"cannot listen on {config.listen}: {exc}") from None
    master = Master(config)
    dispatcher = Dispatcher(protocol.MASTER_REQUESTS, master.handlers, log)
    endpoint = Endpoint(sock, dispatcher, log, first_number=secrets.randbelow(1 << 48) + 1)
    # Request numbers start at a random point: a worker may send a late reply to a request
    # of a previous master process (a run-manual that outlived it), which must not be taken
    # for the answer to one of ours.  (rpc.Endpoint has no parameter for it yet.)
    endpoint.start()
    master.start(endpoint)
    log.info(
        "jobd-master %s listening on %s, ping interval %g s",
        __version__, config.listen, config.ping_interval,
    )  # fmt: skip
    notify_systemd("READY=1")
    watchdog_task = watchdog()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, master)
    await stop.wait()
    log.info("stopping")
    notify_systemd("STOPPING=1")
    if watchdog_task is not None:
        watchdog_task.cancel()
    await master.stop()
    await endpoint.close()
    ctx.term()
    log.info("stopped")
    return 0


def reload(master: Master) -> None:
    """SIGHUP: take the new log level and ping interval; `listen` needs a restart."""
    try:
        config = load_master_config(master.config.path)
    except ConfigError as exc:
        log.error("reload failed, keeping the running config: %s", exc)
        return
    if config.listen != master.config.listen:
        log.warning("reload: a new listen address takes effect at the next restart")
        config = MasterConfig(config.path, master.config.listen, config.ping_interval,
                              config.log_level)  # fmt: skip
    logging.getLogger().setLevel(config.log_level.upper())
    # Workers learn a new interval when they register again; one that expects the old,
    # shorter interval just registers again early.
    master.config = config
    log.info("reloaded %s: ping interval %g s, log level %s",
             config.path, config.ping_interval, config.log_level)  # fmt: skip
