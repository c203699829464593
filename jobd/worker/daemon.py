"""Running the jobd worker as a process: bind, connect, serve, stop on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import zmq
import zmq.asyncio

from jobd import __version__
from jobd.config import WorkerConfig, load_worker_config
from jobd.runtime.backoff import Backoff
from jobd.runtime.command import StartupError, listen, load_curve
from jobd.runtime.reload import reload_config
from jobd.runtime.rescuer import start_rescuer
from jobd.runtime.scheduler import start_scheduler
from jobd.runtime.systemd import notify_systemd, watchdog
from jobd.store.instances import InstanceStore, new_instance_id
from jobd.store.jobstore import REQUIRED_COLUMNS, JobStore, StorageError
from jobd.wire import protocol
from jobd.wire.curve import Authenticator
from jobd.wire.dispatch import Dispatcher
from jobd.wire.endpoint import Endpoint
from jobd.worker.leftovers import prepare_worker_process
from jobd.worker.master_link import MasterLink
from jobd.worker.worker import RESTART_KEYS, Worker

log = logging.getLogger("jobd")


def reload_worker(worker: Worker, auth: Authenticator | None = None) -> None:
    """SIGHUP: the one reload policy of both daemons (jobd.runtime.reload)."""
    new = reload_config(
        worker.config, load_worker_config, RESTART_KEYS, "jobd", worker.apply_config,
        worker.reloads, auth,
    )  # fmt: skip
    if new is not None:
        log.info("reloaded %s: targets %s", new.path, ", ".join(new.targets) or "none")


def poke_everywhere(worker: Worker, link: MasterLink | None) -> Callable[[list[str]], None]:
    """Have this worker claim for these targets at once and, through the master, the
    other workers serving them (a schedule fired, rows were given back)."""

    def poke(targets: list[str]) -> None:
        worker.claimer.want(targets)
        if link is not None:
            link.poke(targets)

    return poke


def start_worker_scheduler(
    config: WorkerConfig, worker: Worker, link: MasterLink | None
) -> asyncio.Task[None] | None:
    """`scheduler: true`: run the schedules here as well (the master runs them too; each
    fire time still makes one job)."""
    if not config.scheduler:
        return None
    poke = poke_everywhere(worker, link)
    _, task = start_scheduler(config.database, config.table, poke, f"worker {config.name}")
    return task


async def check_database(store: JobStore, instances: InstanceStore) -> None:
    """Raise StartupError unless the table has every column jobd needs, and the workers
    table exists."""
    missing = await store.missing_columns()
    where = store.url.redacted()
    if len(missing) == len(REQUIRED_COLUMNS):
        raise StartupError(f"table {store.table_name} does not exist in {where}")
    if missing:
        raise StartupError(f"table {store.table_name} lacks columns: {', '.join(missing)}")
    if not await instances.has_table():
        raise StartupError(
            f"table {store.table_name}_workers does not exist in {where} (see schema.sql)"
        )


async def connect_stores(config: WorkerConfig, retry: bool) -> tuple[JobStore, InstanceStore]:
    """Connect to the database, retrying with backoff when `retry` (the daemon waits
    for a database that is starting; --check does not).  The job store holds the rows of
    a new instance; the instance store (a connection of its own, so heartbeats never wait
    behind claims and writes) writes its heartbeat."""
    store = JobStore(config.database, config.table, config.name, new_instance_id())
    instances = InstanceStore(config.database, config.table, pool_size=1)
    backoff = Backoff()
    while True:
        try:
            await store.connect()
            await instances.connect()
            await check_database(store, instances)
            await store.detect_skip_locked()
            return store, instances
        except StorageError as exc:
            await store.close()
            await instances.close()
            if not retry:
                raise StartupError(str(exc)) from None
            delay = backoff.next()
            log.warning("database not ready, retrying in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
        except StartupError:
            await store.close()
            await instances.close()
            raise


def start_worker_rescuer(
    config: WorkerConfig, worker: Worker, link: MasterLink | None
) -> asyncio.Task[None] | None:
    """`rescuer: true`: rescue dead instances here as well (the master does it too)."""
    if not config.rescuer:
        return None
    worker.rescuer, task = start_rescuer(
        config.database, config.table, poke_everywhere(worker, link), f"worker {config.name}",
        config.rescue_interval,
    )  # fmt: skip
    return task


async def run_worker(config: WorkerConfig) -> int:
    prepare_worker_process()
    curve = load_curve(config.curve)
    ctx = zmq.asyncio.Context()
    sock, auth = listen(ctx, config.listen, curve)
    store, instances = await connect_stores(config, retry=True)
    worker = Worker(config, store, instances)
    metrics = None
    if config.metrics.address is not None:
        # Imported only with `metrics:`: aiohttp and prometheus-client are memory that a
        # worker without metrics does not need.
        from jobd.worker.metrics import serve_metrics

        metrics = await serve_metrics(config, worker)
    await worker.recover()
    endpoint = Endpoint(sock, Dispatcher(protocol.WORKER_REQUESTS, worker.handlers, log), log)
    endpoint.start()
    worker.start()
    master_curve = curve.master if curve else None
    link = MasterLink(worker, config.master, ctx, master_curve) if config.master else None
    if link is not None:
        link.start()
    scheduler = start_worker_scheduler(config, worker, link)
    rescuer = start_worker_rescuer(config, worker, link)
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
    for task in (scheduler, rescuer):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if link is not None:
        await link.close()  # the master stops routing to us while running jobs finish
    await worker.stop(fast)
    if watchdog_task is not None:
        watchdog_task.cancel()
    await endpoint.close()
    if metrics is not None:
        await metrics.cleanup()
    await store.close()
    await instances.close()
    if auth is not None:
        auth.stop()
    ctx.term()
    log.info("stopped")
    return 1 if worker.crashed else 0
