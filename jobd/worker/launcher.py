"""Spawning a job's process and collecting how it ended.  The one place a process is
started; it knows no database and no sockets.

The command template is split like a shell would (shlex) *before* `{id}`, `{target}`
and `{slot}` are substituted, and run without a shell, so no value can inject
arguments.  Each job gets its own process group (a new session); when the job's main
process exits, whatever it left running in that group is killed, so no stray process
or zombie stays behind.

Spawning is the hot path of every job, so it takes the fewest steps the standard
library offers: `os.posix_spawn` (vfork and exec, no Python in the child; `subprocess`
only for a launcher with a `cwd`, which posix_spawn cannot set in Python 3.11), pipes
of our own read by the event loop straight from their descriptors, and the exit seen
through a pidfd.  asyncio's subprocess transports cost the worker much more CPU per
job (bench/README.md), and their `wait()` never returns while a background child of
the job holds the pipes open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping

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
_READ_SIZE = 65536
#: Python ignores these; an ignored signal stays ignored across exec, so a job gets
#: them back at their defaults (as `subprocess` does).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


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


class RunningJob:
    """A started job process.  The event loop reads its output as it comes and sees it
    exit (its pidfd); its process group is killed right then, while its zombie still
    holds the group's id, so the kill can never reach an unrelated process.  `on_done`
    gets the outcome once the job has exited and its output is read."""

    def __init__(
        self,
        job: Job,
        pid: int,
        stdout: int,
        stderr: int,
        max_output: int,
        on_done: Callable[[Outcome], None],
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.job = job
        self.pid = pid
        self.started = time.monotonic()
        self._loop = loop = asyncio.get_running_loop()
        self._on_done = on_done
        self._process = process  # held so that `subprocess` never reaps it behind our back
        self.exited: asyncio.Future[int] = loop.create_future()
        self._duration = 0.0
        self._grace: asyncio.TimerHandle | None = None
        self.stdout = OutputBuffer(max_output)
        self.stderr = OutputBuffer(max_output)
        self._open = {stdout: self.stdout, stderr: self.stderr}
        # Blocking descriptors are fine: each read follows a readiness event from the
        # loop, and nothing else reads these pipes, so it returns what is there at once.
        for fd, buffer in self._open.items():
            loop.add_reader(fd, self._read, fd, buffer)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            # A kernel before 5.3 (or a sandbox) without pidfds, or no descriptor left:
            # a thread waits for the exit instead.
            threading.Thread(target=self._wait_in_thread, daemon=True).start()
        else:
            loop.add_reader(pidfd, self._on_pidfd, pidfd)

    # --- output and exit, called by the event loop -------------------------------

    def _read(self, fd: int, buffer: OutputBuffer) -> None:
        try:
            chunk = os.read(fd, _READ_SIZE)
        except OSError:
            chunk = b""
        if chunk:
            buffer.feed(chunk)
        else:
            self._close_pipe(fd)
            if not self._open and self.exited.done():
                self._finish()

    def _close_pipe(self, fd: int) -> None:
        if self._open.pop(fd, None) is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def _on_pidfd(self, pidfd: int) -> None:
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        self._reap()

    def _wait_in_thread(self) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        self._loop.call_soon_threadsafe(self._reap)

    def _reap(self) -> None:
        self._duration = time.monotonic() - self.started
        self.send_signal(signal.SIGKILL)  # what the job left in its group
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if self._process is not None:
            self._process.returncode = code
        self.exited.set_result(code)
        if self._open:
            # A process that left the group (setsid) may still hold the pipes.
            self._grace = self._loop.call_later(_PIPE_GRACE, self._finish)
        else:
            self._finish()

    def _finish(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
        for fd in list(self._open):
            self._close_pipe(fd)
        code = self.exited.result()
        if code < 0:
            exit_code, sig = None, signal_name(-code)
        else:
            exit_code, sig = code, None
        self._on_done(
            Outcome(
                result="ok" if code == 0 else "fail",
                code=exit_code,
                signal=sig,
                stdout=self.stdout.text(),
                stderr=self.stderr.text(),
                duration=self._duration,
            )
        )

    def feed_stdin(self, fd: int, data: bytes) -> None:
        """Write `data` to the job's stdin as it reads it, then close it (end of input).
        A job that exits without reading it all just loses the rest."""
        os.set_blocking(fd, False)
        view = memoryview(data)

        def write() -> None:
            nonlocal view
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                return
            except OSError:
                view = view[:0]  # the job closed its stdin (EPIPE)
            if not view:
                self._loop.remove_writer(fd)
                os.close(fd)

        self._loop.add_writer(fd, write)

    # --- control ------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Signal the job's whole process group (until the job has been reaped)."""
        if not self.exited.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    async def terminate(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it if the job has not exited after `grace` seconds."""
        self.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), grace)
        except TimeoutError:
            self.send_signal(signal.SIGKILL)


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

    def start(self, job: Job, on_done: Callable[[Outcome], None]) -> RunningJob:
        """Spawn the job's process; raises LaunchError if it cannot start (the job fails,
        never the worker).  `on_done` gets its outcome."""
        argv, env = self.argv(job), self.env(job)
        pipes = _Pipes()
        try:
            # Job data goes on stdin, never on the command line (ps shows that); without
            # data the job inherits the worker's stdin, /dev/null (prepare_worker_process).
            stdin = pipes.to_child() if job.data is not None else None
            stdout, stderr = pipes.from_child(), pipes.from_child()
            pid, process = self._spawn(argv, env, stdin, stdout, stderr)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # ValueError: e.g. a NUL byte in an argument or variable.  OSError: no such
            # file, no permission, a bad cwd, and no descriptors left for the pipes.
            pipes.close_all()
            raise LaunchError(f"jobd: cannot start {self.template[0]}: {exc}") from None
        pipes.close_childs_ends()
        running = RunningJob(job, pid, stdout[1], stderr[1], self.max_output, on_done, process)
        if stdin is not None:
            assert job.data is not None
            running.feed_stdin(stdin[1], job.data.encode())
        return running

    def _spawn(
        self,
        argv: list[str],
        env: Mapping[str, str],
        stdin: tuple[int, int] | None,
        stdout: tuple[int, int],
        stderr: tuple[int, int],
    ) -> tuple[int, subprocess.Popen[bytes] | None]:
        """The one place a job's process is started, its pipes' child ends (the first of
        each pair) becoming its 0, 1 and 2: (its pid, and the Popen for a cwd)."""
        if self.config.cwd is not None:
            process = subprocess.Popen(
                argv, stdin=stdin[0] if stdin else 0, stdout=stdout[0], stderr=stderr[0],
                cwd=self.config.cwd, env=env, start_new_session=True,
            )  # fmt: skip
            return process.pid, process
        pid = os.posix_spawn(
            _executable(argv[0], env),
            argv,
            env,
            file_actions=[
                *([(os.POSIX_SPAWN_DUP2, stdin[0], 0)] if stdin else []),
                (os.POSIX_SPAWN_DUP2, stdout[0], 1),
                (os.POSIX_SPAWN_DUP2, stderr[0], 2),
            ],
            setsid=True,  # own process group, away from our terminal
            setsigdef=_DEFAULT_SIGNALS,
            setsigmask=(),
        )
        return pid, None


class _Pipes:
    """The pipes of one spawn, close-on-exec; the spawn dup2's the child's ends onto its
    0, 1 and 2, and the worker keeps the other ends."""

    def __init__(self) -> None:
        self.childs: list[int] = []
        self.ours: list[int] = []

    def to_child(self) -> tuple[int, int]:
        """A pipe the child reads (its stdin): (the child's end, ours)."""
        read, write = os.pipe2(os.O_CLOEXEC)
        self.childs.append(read)
        self.ours.append(write)
        return read, write

    def from_child(self) -> tuple[int, int]:
        """A pipe the child writes (its stdout or stderr): (the child's end, ours)."""
        read, write = os.pipe2(os.O_CLOEXEC)
        self.childs.append(write)
        self.ours.append(read)
        return write, read

    def close_childs_ends(self) -> None:
        """After the spawn: the child has its own copies."""
        for fd in self.childs:
            os.close(fd)

    def close_all(self) -> None:
        for fd in self.childs + self.ours:
            os.close(fd)


def _executable(name: str, env: Mapping[str, str]) -> str:
    """The file posix_spawn runs: a bare name is looked up in the job's PATH, as
    `subprocess` and the shell do."""
    if "/" in name:
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(2, "No such file or directory", name)
    return found


def launch_failure(error: LaunchError) -> Outcome:
    return Outcome("fail", None, None, "", str(error) + "\n", 0.0)
