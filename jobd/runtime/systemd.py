"""systemd's notify protocol for both daemons: READY, STOPPING and the watchdog."""

from __future__ import annotations

import asyncio
import os

import sdnotify


def notify_systemd(state: str) -> None:
    """sd_notify(3); does nothing when not started by systemd (no NOTIFY_SOCKET)."""
    sdnotify.SystemdNotifier().notify(state)


def watchdog() -> asyncio.Task[None] | None:
    """Ping systemd's watchdog at half its timeout while the event loop is healthy
    (WatchdogSec= in the unit); None when the watchdog is off or meant for another pid."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    interval = int(usec) / 2e6

    async def ping() -> None:
        notifier = sdnotify.SystemdNotifier()
        while True:
            notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    return asyncio.create_task(ping(), name="watchdog")
