"""Spawning a job's process and collecting how it ended.  The one place a process is
started; it knows no database and no sockets.

The command template is split like a shell would (shlex) *before* `{id}`, `{target}`
and `{slot}` are substituted, and run without a shell, so no value can inject
arguments.  Each job gets its own process group (a new session); when the job's main
process exits, whatever it left running in that group is killed, so no stray process
or zombie stays behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping

from jobd.config import DATABASE_URL_ENV, LauncherConfig
from jobd.jobs import Job, Outcome

_PLACEHOLDER = re.compile(r"\{(id|target|slot|schedule)\}")
#: Every job's environment names its worker and the worker's queue (database and
#: table), so a restarted worker can find the processes its previous life left running
#: without touching those of another worker on the same host.
WORKER_ENV = "JOBD_WORKER"
INSTANCE_ENV = "JOBD_WORKER_INSTANCE"
#: How long to wait for output pipes after the group is gone (a process that escaped
#: the group with setsid may still hold them open).
_PIPE_GRACE = 1.0


class LaunchError(Exception):
    """The command could not be started (missing file, no permission, bad cwd)."""


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"[:10]


class OutputBuffer:
    """Keeps the first `limit` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        # Replacement keeps binary output from breaking the row's update.
        text = self.kept.decode("utf-8", errors="replace")
        if self.dropped:
            text += f"\n[jobd: output truncated, {self.dropped} more bytes dropped]\n"
        return text


class _JobProtocol(asyncio.SubprocessProtocol):
    """Collects a job's output as it arrives and notes when the process exits.

    asyncio's own Process.wait() only returns once the pipes are closed, which a
    background child of the job can hold open forever; this protocol tells exit and
    pipe closure apart."""

    def __init__(self, max_output: int) -> None:
        loop = asyncio.get_running_loop()
        self.outputs = {1: OutputBuffer(max_output), 2: OutputBuffer(max_output)}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.outputs[fd].feed(data if isinstance(data, bytes) else data.encode())

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class RunningJob:
    """A started job process."""

    def __init__(
        self,
        job: Job,
        transport: asyncio.SubprocessTransport,
        protocol: _JobProtocol,
        started: float,
    ) -> None:
        self.job = job
        self.transport = transport
        self.protocol = protocol
        self.pid = transport.get_pid()
        self.started = started

    def send_signal(self, sig: int) -> None:
        """Signal the job's whole process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def terminate(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it if the job has not exited after `grace` seconds."""
        self.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.protocol.exited), grace)
        except TimeoutError:
            self.send_signal(signal.SIGKILL)

    async def wait(self) -> Outcome:
        await self.protocol.exited
        duration = time.monotonic() - self.started
        self.send_signal(signal.SIGKILL)  # leftovers of the group: no stray processes
        # A process that left the group (setsid) may still hold the pipes: stop reading.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.protocol.closed), _PIPE_GRACE)
        code = self.transport.get_returncode()
        self.transport.close()
        assert code is not None
        if code < 0:
            return_code, sig = None, signal_name(-code)
        else:
            return_code, sig = code, None
        return Outcome(
            result="ok" if code == 0 else "fail",
            return_code=return_code,
            sig=sig,
            stdout=self.protocol.outputs[1].text(),
            stderr=self.protocol.outputs[2].text(),
            duration=duration,
        )


class Launcher:
    """Turns a job into a process, from the launcher section of the config."""

    def __init__(self, config: LauncherConfig, max_output: int, worker: str, instance: str) -> None:
        self.config = config
        self.worker = worker
        self.instance = instance
        self.max_output = max_output
        self.template = shlex.split(config.command)
        base = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
        self.base_env: Mapping[str, str] = {**base, **config.env}

    def argv(self, job: Job) -> list[str]:
        values = {
            "id": str(job.id),
            "target": job.target,
            "slot": job.slot,
            "schedule": "" if job.schedule_id is None else str(job.schedule_id),
        }
        return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in self.template]

    def env(self, job: Job) -> dict[str, str]:
        return {
            **self.base_env,
            "JOBD_ID": str(job.id),
            "JOBD_TARGET": job.target,
            "JOBD_SLOT": job.slot,
            "JOBD_SCHEDULE": "" if job.schedule_id is None else str(job.schedule_id),
            WORKER_ENV: self.worker,
            INSTANCE_ENV: self.instance,
        }

    async def start(self, job: Job) -> RunningJob:
        """Spawn the job's process; raises LaunchError if it cannot start."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _JobProtocol(self.max_output),
                *self.argv(job),
                # Job data goes on stdin, never on the command line (ps shows that).
                stdin=subprocess.DEVNULL if job.data is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.config.cwd,
                env=self.env(job),
                start_new_session=True,  # own process group, away from our terminal
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # ValueError: e.g. a NUL byte in an argument or variable. Whatever fails
            # here fails the job, never the worker's slot.
            raise LaunchError(f"jobd: cannot start {self.template[0]}: {exc}") from None
        if job.data is not None:
            stdin = transport.get_pipe_transport(0)
            assert isinstance(stdin, asyncio.WriteTransport)
            stdin.write(job.data.encode())
            stdin.close()  # after the buffered data is written: the job sees end of input
        return RunningJob(job, transport, protocol, started)


def use_pidfd_child_watcher() -> None:
    """Python 3.11 reaps each child in a thread of its own by default; a pidfd watcher
    reaps them from the event loop (3.12 does this by itself)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # kernel without pidfd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


def launch_failure(error: LaunchError) -> Outcome:
    return Outcome("fail", None, None, "", str(error) + "\n", 0.0)


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
