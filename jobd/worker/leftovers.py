"""A worker's care of the processes around its jobs: what a job inherits from the worker
(`prepare_worker_process`, once at start), and the job processes a previous life of the
worker left running (after kill -9), found and stopped before its rows are settled, so
no job runs twice at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from jobd.worker.launcher import INSTANCE_ENV


def prepare_worker_process() -> None:
    """Once, before the first job: what a job inherits from the worker.

    * Every descriptor the worker inherited beyond 0, 1 and 2 becomes close-on-exec:
      posix_spawn, unlike `subprocess`, closes nothing, and a job must not get them.
      Descriptors jobd opens itself are close-on-exec already (Python, libzmq).
    * The worker's stdin becomes /dev/null (it never reads it), so a job without data
      inherits that as its stdin with no step of its own in the spawn."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.set_inheritable(fd, False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    if devnull != 0:
        os.dup2(devnull, 0)
        os.close(devnull)


def find_leftovers(instance: str) -> list[int]:
    """Processes started by this worker instance that are still alive (its job processes,
    after the worker itself was killed), found by the variable every job gets."""
    marker = f"\0{INSTANCE_ENV}={instance}\0".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = b"\0" + f.read()
        except OSError:
            continue  # gone, or not ours to read
        if marker in environ:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def stop_leftovers(pids: list[int], grace: float) -> None:
    """SIGTERM the process groups of `pids`, SIGKILL what is left after `grace` seconds,
    and return once all are gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), sig)
        deadline = time.monotonic() + wait
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return
