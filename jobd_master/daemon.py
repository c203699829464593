"""Running jobd-master as a process: bind, serve, stop on a signal, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal

import zmq
import zmq.asyncio

from jobd import __version__, protocol
from jobd.config import ConfigError, MasterConfig, load_master_config
from jobd.curve import Authenticator
from jobd.rpc import Dispatcher, Endpoint
from jobd.service import StartupError, listen, load_curve, notify_systemd, watchdog
from jobd_master.events import EventPublisher
from jobd_master.master import Master

log = logging.getLogger("jobd_master")


async def run_master(config: MasterConfig) -> int:
    curve = load_curve(config.curve)
    ctx = zmq.asyncio.Context()
    # One authenticator for the context: workers and clients alike need an authorized key.
    sock, auth = listen(ctx, config.listen, curve)
    try:
        keys = curve.keys if curve else None
        events = EventPublisher.bind(ctx, config.events, keys) if config.events else None
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        if auth is not None:
            auth.stop()
        ctx.term()
        raise StartupError(f"cannot publish events on {config.events}: {exc}") from None
    master = Master(config, events)
    dispatcher = Dispatcher(protocol.MASTER_REQUESTS, master.handlers, log)
    endpoint = Endpoint(sock, dispatcher, log, first_number=int.from_bytes(os.urandom(6)) + 1)
    # Request numbers start at a random point: a worker may send a late reply to a request
    # of a previous master process (a run-manual that outlived it), which must not be taken
    # for the answer to one of ours.  (rpc.Endpoint has no parameter for it yet.)
    endpoint.start()
    master.start(endpoint)
    scheduler = start_scheduler(config, master)
    if events is not None:
        log.info("publishing job events on %s", events.address)
    log.info(
        "jobd-master %s listening on %s%s, ping interval %g s",
        __version__, config.listen, " (CURVE)" if curve else "", config.ping_interval,
    )  # fmt: skip
    notify_systemd("READY=1")
    watchdog_task = watchdog()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, master, auth)
    await stop.wait()
    log.info("stopping")
    notify_systemd("STOPPING=1")
    if watchdog_task is not None:
        watchdog_task.cancel()
    if scheduler is not None:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
    await master.stop()
    await endpoint.close()
    if events is not None:
        events.close()
    if auth is not None:
        auth.stop()
    ctx.term()
    log.info("stopped")
    return 0


async def check_schedules(config: MasterConfig) -> None:
    """--check: a configured database answers and has the schedules table."""
    if config.database is None:
        return
    # The database driver is imported only by a master that has a database.
    from jobd.db import StorageError
    from jobd.schedules import ScheduleStore

    store = ScheduleStore(config.database, config.table, pool_size=1)
    try:
        await store.connect()
        if not await store.has_table():
            raise StartupError(
                f"table {config.table}_schedules does not exist in {config.database.redacted()}"
                " (see schema.sql)"
            )
    except StorageError as exc:
        raise StartupError(str(exc)) from None
    finally:
        await store.close()


def start_scheduler(config: MasterConfig, master: Master) -> asyncio.Task[None] | None:
    """With a database configured, the master runs the schedules; each fire pokes the
    schedule's target like a client's poke would."""
    if config.database is None:
        return None
    from jobd.schedules import run_scheduler  # only a master with a database needs it

    def poke(targets: list[str]) -> None:
        master.poke(targets)

    task = asyncio.create_task(
        run_scheduler(config.database, config.table, poke, "jobd-master"), name="scheduler"
    )
    task.add_done_callback(_scheduler_ended)
    return task


def _scheduler_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the scheduler failed; schedules are off", exc_info=task.exception())


def reload(master: Master, auth: Authenticator | None = None) -> None:
    """SIGHUP: take the new log level and ping interval, and read the CURVE authorized
    keys again; `listen` and `curve` need a restart."""
    if auth is not None:
        auth.reload()
    try:
        config = load_master_config(master.config.path)
    except ConfigError as exc:
        log.error("reload failed, keeping the running config: %s", exc)
        return
    for key in ("listen", "curve", "allow_insecure", "database", "table", "events"):
        if getattr(config, key) != getattr(master.config, key):
            what = "listen address" if key == "listen" else key
            log.warning("reload: a new %s takes effect at the next restart", what)
            config = dataclasses.replace(config, **{key: getattr(master.config, key)})
    logging.getLogger().setLevel(config.log_level.upper())
    # Workers learn a new interval when they register again; one that expects the old,
    # shorter interval just registers again early.
    master.config = config
    log.info("reloaded %s: ping interval %g s, log level %s",
             config.path, config.ping_interval, config.log_level)  # fmt: skip
