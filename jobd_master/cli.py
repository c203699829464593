"""`jobd-master`: the master daemon's command line."""

from __future__ import annotations

from jobd.config import DEFAULT_MASTER_CONFIG, MasterConfig, load_master_config
from jobd.service import daemon_command, load_curve
from jobd_master.daemon import check_schedules, run_master


async def check(config: MasterConfig) -> str:
    """--check: the key files hold keys; a configured database has the schedules table."""
    load_curve(config.curve)
    await check_schedules(config)
    schedules = f", schedules of {config.table}" if config.database else ""
    return f"listen {config.listen}{schedules}"


main = daemon_command(
    "jobd-master",
    DEFAULT_MASTER_CONFIG,
    load_master_config,
    check,
    run_master,
    lambda config: "jobd-master",
    "jobd-master: keeps the registry of workers and routes pokes and requests to them.",
)
