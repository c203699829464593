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
import time
from collections.abc import Mapping

from jobd.config import DATABASE_URL_ENV, LauncherConfig
from jobd.jobs import Job, Outcome

_PLACEHOLDER = re.compile(r"\{(id|target|slot)\}")
_READ_CHUNK = 1 << 16
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


async def _drain(stream: asyncio.StreamReader | None, buffer: OutputBuffer) -> None:
    if stream is None:
        return
    while chunk := await stream.read(_READ_CHUNK):
        buffer.feed(chunk)


class RunningJob:
    """A started job process."""

    def __init__(
        self, job: Job, process: asyncio.subprocess.Process, max_output: int, started: float
    ) -> None:
        self.job = job
        self.process = process
        self.pid = process.pid
        self.started = started
        self._stdout = OutputBuffer(max_output)
        self._stderr = OutputBuffer(max_output)
        self._readers = [
            asyncio.ensure_future(_drain(process.stdout, self._stdout)),
            asyncio.ensure_future(_drain(process.stderr, self._stderr)),
        ]

    def send_signal(self, sig: int) -> None:
        """Signal the job's whole process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def wait(self) -> Outcome:
        code = await self.process.wait()
        duration = time.monotonic() - self.started
        self.send_signal(signal.SIGKILL)  # leftovers of the group: no stray processes
        _, pending = await asyncio.wait(self._readers, timeout=_PIPE_GRACE)
        for reader in pending:
            reader.cancel()
        if code < 0:
            return_code, sig = None, signal_name(-code)
        else:
            return_code, sig = code, None
        return Outcome(
            result="ok" if code == 0 else "fail",
            return_code=return_code,
            sig=sig,
            stdout=self._stdout.text(),
            stderr=self._stderr.text(),
            duration=duration,
        )


class Launcher:
    """Turns a job into a process, from the launcher section of the config."""

    def __init__(self, config: LauncherConfig, max_output: int) -> None:
        self.config = config
        self.max_output = max_output
        self.template = shlex.split(config.command)
        base = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
        self.base_env: Mapping[str, str] = {**base, **config.env}

    def argv(self, job: Job) -> list[str]:
        values = {"id": str(job.id), "target": job.target, "slot": job.slot}
        return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in self.template]

    def env(self, job: Job) -> dict[str, str]:
        return {
            **self.base_env,
            "JOBD_ID": str(job.id),
            "JOBD_TARGET": job.target,
            "JOBD_SLOT": job.slot,
        }

    async def start(self, job: Job) -> RunningJob:
        """Spawn the job's process; raises LaunchError if it cannot start."""
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv(job),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.config.cwd,
                env=self.env(job),
                start_new_session=True,  # own process group, away from our terminal
            )
        except OSError as exc:
            raise LaunchError(f"jobd: cannot start {self.template[0]}: {exc}") from None
        return RunningJob(job, process, self.max_output, started)


def launch_failure(error: LaunchError) -> Outcome:
    return Outcome("fail", None, None, "", str(error) + "\n", 0.0)
