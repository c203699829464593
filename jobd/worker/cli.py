"""`jobd`: the worker daemon's command line."""

from __future__ import annotations

from jobd.config import DEFAULT_WORKER_CONFIG, WorkerConfig, load_worker_config
from jobd.runtime.command import daemon_command, load_curve
from jobd.worker.daemon import connect_stores, run_worker


async def check(config: WorkerConfig) -> str:
    """--check: the key files hold keys, the database answers, the table has every column
    and the workers table exists."""
    load_curve(config.curve)
    store, instances = await connect_stores(config, retry=False)
    await store.close()
    await instances.close()
    return f"database {config.database.redacted()}"


main = daemon_command(
    "jobd",
    DEFAULT_WORKER_CONFIG,
    load_worker_config,
    check,
    run_worker,
    lambda config: f"jobd[{config.name}]",
    "The jobd worker: runs the jobs of its targets from the jobs table.",
)
