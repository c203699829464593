"""Running jobd-master as a process: bind, serve, stop on a signal, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import zmq
import zmq.asyncio

from jobd import __version__
from jobd.config import MasterConfig, load_master_config
from jobd.runtime.command import StartupError, listen, load_curve
from jobd.runtime.reload import reload_config
from jobd.runtime.systemd import notify_systemd, watchdog
from jobd.wire import protocol
from jobd.wire.curve import Authenticator
from jobd.wire.dispatch import Dispatcher
from jobd.wire.endpoint import Endpoint
from jobd_master.master import Master
from jobd_master.publisher import EventPublisher

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
    # for the answer to one of ours.
    endpoint.start()
    master.start(endpoint)
    duties = start_duties(config, master)
    web = await start_web(config, master)
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
    for task in duties:
        task.cancel()
    await asyncio.gather(*duties, return_exceptions=True)
    if web is not None:
        await web.stop()
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
    """--check: a configured database answers and has the schedules and workers tables."""
    if config.database is None:
        return
    # The database driver is imported only by a master that has a database.
    from jobd.store.pool import StorageError
    from jobd.store.schedules import ScheduleStore

    store = ScheduleStore(config.database, config.table, pool_size=1)
    try:
        await store.connect()
        for table in (f"{config.table}_schedules", f"{config.table}_workers"):
            if not await store.table_exists(table):
                raise StartupError(
                    f"table {table} does not exist in {config.database.redacted()} (see schema.sql)"
                )
    except StorageError as exc:
        raise StartupError(str(exc)) from None
    finally:
        await store.close()


def start_duties(config: MasterConfig, master: Master) -> list[asyncio.Task[None]]:
    """With a database configured, the master runs the schedules and rescues the rows of
    dead worker instances; a fire, and rows given back, poke their targets like a
    client's poke would."""
    if config.database is None:
        return []
    # Only a master with a database imports the database driver.
    from jobd.runtime.rescuer import start_rescuer
    from jobd.runtime.scheduler import start_scheduler

    def poke(targets: list[str]) -> None:
        master.poke(targets)

    master.scheduler, scheduler = start_scheduler(
        config.database, config.table, poke, "jobd-master"
    )
    master.rescuer, rescuer = start_rescuer(
        config.database, config.table, poke, "jobd-master", config.rescue_interval
    )
    return [scheduler, rescuer]


async def start_web(config: MasterConfig, master: Master) -> Any:
    """`http: HOST:PORT`: the dashboard and the metrics (jobd_master.web)."""
    if config.http.address is None:
        return None
    # The HTTP side needs what a master without it leaves out (see jobd_master.cli).
    if sys.modules.get("ssl", False) is None:
        del sys.modules["ssl"]
    from jobd.runtime.http import StartupFailed
    from jobd.users import UsersError
    from jobd_master.web.app import Web

    try:
        web = Web(config, master)
        await web.start()
    except (StartupFailed, UsersError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    log.info("dashboard and metrics at http://%s/", config.http.address)
    return web


#: Keys whose change a reload cannot apply: where the master listens and publishes, its
#: keys, and the database its scheduler reads.
RESTART_KEYS = (
    "listen", "curve", "allow_insecure", "database", "table", "events", "rescue_interval",
    "http",
)  # fmt: skip


def reload(master: Master, auth: Authenticator | None = None) -> None:
    """SIGHUP: the one reload policy of both daemons (jobd.runtime.reload).  What it
    applies: the log level and the ping interval (workers learn a new interval when they
    register again; one that expects the old, shorter one just registers early)."""

    def apply(config: MasterConfig) -> None:
        logging.getLogger().setLevel(config.log_level.upper())
        master.config = config

    new = reload_config(
        master.config, load_master_config, RESTART_KEYS, "jobd-master", apply, master.reloads,
        auth,
    )  # fmt: skip
    if new is not None:
        log.info("reloaded %s: ping interval %g s, log level %s",
                 new.path, new.ping_interval, new.log_level)  # fmt: skip
