"""Running the jobd worker as a process: bind, connect, serve, stop on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal

import zmq
import zmq.asyncio

from jobd import __version__, protocol
from jobd.config import ConfigError, WorkerConfig, load_worker_config
from jobd.curve import Authenticator
from jobd.launcher import prepare_worker_process
from jobd.master_link import MasterLink
from jobd.rpc import Dispatcher, Endpoint
from jobd.schedules import run_scheduler
from jobd.service import StartupError, listen, load_curve, notify_systemd, watchdog
from jobd.storage import REQUIRED_COLUMNS, JobStore, StorageError
from jobd.worker import RETRY_MAX, RETRY_MIN, Worker

log = logging.getLogger("jobd")


def reload_worker(worker: Worker, auth: Authenticator | None = None) -> None:
    """SIGHUP (systemctl reload): re-read the config and apply it; an invalid config, or
    one that changes what needs a restart, is refused and the running one stays.  The
    CURVE authorized keys are read again either way (key rotation)."""
    if auth is not None:
        auth.reload()
    try:
        new = load_worker_config(worker.config.path)
        worker.apply_config(new)
    except (ConfigError, ValueError) as exc:
        log.error("reload refused, keeping the running config: %s", exc)
        return
    log.info("reloaded %s: targets %s", new.path, ", ".join(new.targets) or "none")


def start_scheduler(
    config: WorkerConfig, worker: Worker, link: MasterLink | None
) -> asyncio.Task[None] | None:
    """`scheduler: true`: run the schedules here as well (the master runs them too; each
    fire time still makes one job).  A fire polls this worker at once and, through the
    master, the other workers serving the target."""
    if not config.scheduler:
        return None

    def poke(targets: list[str]) -> None:
        worker.poll(targets)
        if link is not None:
            link.poke(targets)

    task = asyncio.create_task(
        run_scheduler(config.database, config.table, poke, f"worker {config.name}"),
        name="scheduler",
    )
    task.add_done_callback(_scheduler_ended)
    return task


def _scheduler_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the scheduler failed; schedules are off", exc_info=task.exception())


async def check_database(store: JobStore) -> None:
    """Raise StartupError unless the table has every column jobd needs."""
    missing = await store.missing_columns()
    if len(missing) == len(REQUIRED_COLUMNS):
        raise StartupError(f"table {store.table_name} does not exist in {store.url.redacted()}")
    if missing:
        raise StartupError(f"table {store.table_name} lacks columns: {', '.join(missing)}")


async def connect_store(config: WorkerConfig, retry: bool) -> JobStore:
    """Connect to the database, retrying with backoff when `retry` (the daemon waits
    for a database that is starting; --check does not)."""
    store = JobStore(config.database, config.table, config.name)
    delay = RETRY_MIN
    while True:
        try:
            await store.connect()
            await check_database(store)
            await store.detect_skip_locked()
            return store
        except StorageError as exc:
            await store.close()
            if not retry:
                raise StartupError(str(exc)) from None
            log.warning("database not ready, retrying in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
        except StartupError:
            await store.close()
            raise


async def run_worker(config: WorkerConfig) -> int:
    prepare_worker_process()
    curve = load_curve(config.curve)
    ctx = zmq.asyncio.Context()
    sock, auth = listen(ctx, config.listen, curve)
    store = await connect_store(config, retry=True)
    worker = Worker(config, store)
    await worker.recover()
    endpoint = Endpoint(sock, Dispatcher(protocol.WORKER_REQUESTS, worker.handlers, log), log)
    endpoint.start()
    worker.start()
    master_curve = curve.master if curve else None
    link = MasterLink(worker, config.master, ctx, master_curve) if config.master else None
    if link is not None:
        link.start()
    scheduler = start_scheduler(config, worker, link)
    log.info(
        "jobd %s worker %s listening on %s%s, database %s, targets %s",
        __version__, config.name, config.listen, " (CURVE)" if curve else "",
        config.database.redacted(), ", ".join(config.targets) or "none",
    )  # fmt: skip
    notify_systemd("READY=1")
    watchdog_task = watchdog()

    stop = asyncio.Event()
    fast = asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stop.is_set():
            log.info(
                "%s: stopping; running jobs may finish for %g s", name, config.shutdown_timeout
            )
            stop.set()
        else:
            log.warning("%s again: stopping running jobs now", name)
            fast.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, reload_worker, worker, auth)
    worker.on_crash = stop.set
    await stop.wait()
    notify_systemd("STOPPING=1")
    if scheduler is not None:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
    if link is not None:
        await link.close()  # the master stops routing to us while running jobs finish
    await worker.stop(fast)
    if watchdog_task is not None:
        watchdog_task.cancel()
    await endpoint.close()
    await store.close()
    if auth is not None:
        auth.stop()
    ctx.term()
    log.info("stopped")
    return 1 if worker.crashed else 0
