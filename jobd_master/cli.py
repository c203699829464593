"""`jobd-master`: the master daemon's command line."""

from __future__ import annotations

import sys

# The master speaks no TLS (CURVE is ZeroMQ's own, over libsodium), yet asyncio imports
# ssl, which maps OpenSSL: megabytes of a daemon meant to stay small.  With ssl marked
# missing, asyncio (and pymysql, for the scheduler's database) go on without it, as they
# do on a Python built without OpenSSL.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

from jobd.config import DEFAULT_MASTER_CONFIG, MasterConfig, load_master_config  # noqa: E402
from jobd.runtime.command import daemon_command, load_curve  # noqa: E402
from jobd_master.daemon import check_schedules, run_master  # noqa: E402


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
