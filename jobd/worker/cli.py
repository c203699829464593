"""`jobd`: the worker daemon's command line."""

from __future__ import annotations

from jobd.config import DEFAULT_WORKER_CONFIG, WorkerConfig, load_worker_config
from jobd.runtime.command import daemon_command, load_curve
from jobd.worker.daemon import connect_store, run_worker


async def check(config: WorkerConfig) -> str:
    """--check: the key files hold keys, the database answers, the table has every column."""
    load_curve(config.curve)
    store = await connect_store(config, retry=False)
    await store.close()
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
