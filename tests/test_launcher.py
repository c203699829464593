"""The launcher: what a job inherits from its worker, its stdin, and its exit seen
without pidfds.  Real processes throughout; the last test runs jobd.launcher in this
process, as a worker does, on a kernel that lacks pidfd_open."""

from __future__ import annotations

import asyncio
import errno
import json
import os

import pytest

from jobd.config import LauncherConfig
from jobd.jobs import Job, Outcome
from jobd.worker.launcher import Launcher, LaunchError


def test_a_job_inherits_no_descriptor_of_the_worker(jobs, start_worker):
    # A descriptor the worker itself inherited (from a shell, a supervisor) that is not
    # close-on-exec: posix_spawn would hand it to every job unless jobd marks it.
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        command = (
            f"sh -c 'test -e /proc/$$/fd/{write_end} && echo leaked || echo clean;"
            " readlink /proc/$$/fd/0'"
        )
        worker = start_worker({"t": 1}, command=command, pass_fds=(write_end,))
        (job_id,) = jobs.insert("t")
        worker.request("poll")
        (row,) = jobs.wait_done([job_id])
    finally:
        os.close(read_end)
        os.close(write_end)
    assert row["result"] == "ok", row
    assert row["stdout"] == "clean\n/dev/null\n"  # and stdin is /dev/null, not the worker's


def test_data_bigger_than_a_pipe_reaches_the_job_whole(jobs, start_worker):
    worker = start_worker({"t": 2}, command="wc -c")
    payload = json.dumps({"blob": "x" * 300_000})  # a pipe holds 64 KiB
    (big,) = jobs.insert("t", data=payload)
    worker.request("poll")
    (row,) = jobs.wait_done([big])
    assert row["result"] == "ok"
    assert int(row["stdout"]) == len(payload.encode())


def test_a_job_that_never_reads_its_data_ends_normally(jobs, start_worker):
    worker = start_worker({"t": 2}, command="sh -c 'exit 5'")
    (ignored,) = jobs.insert("t", data=json.dumps({"blob": "y" * 300_000}))
    worker.request("poll")
    (row,) = jobs.wait_done([ignored])
    assert (row["result"], row["return_code"]) == ("fail", 5)  # its own code, no EPIPE
    (after,) = jobs.insert("t")  # the worker carries on
    worker.request("poll")
    (row,) = jobs.wait_done([after])
    assert (row["status"], row["return_code"]) == ("done", 5)
    assert worker.request("ping")["name"] == "w0"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cwd", [None, "/tmp"])  # posix_spawn, and subprocess for a cwd
async def test_exit_is_seen_without_pidfds(monkeypatch, cwd):
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    launcher = Launcher(
        LauncherConfig("sh -c 'echo out {id}; echo err >&2; pwd >&2; exit 3'", cwd=cwd),
        4096, "w", "test-instance",
    )  # fmt: skip
    done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    running = launcher.start(Job(7, "t", "default"), done.set_result)
    outcome = await asyncio.wait_for(done, 10)
    assert (outcome.result, outcome.code, outcome.signal) == ("fail", 3, None)
    assert outcome.stdout == "out 7\n"
    assert outcome.stderr.startswith("err\n")
    if cwd is not None:
        assert outcome.stderr == f"err\n{cwd}\n"
    with pytest.raises(ChildProcessError):
        os.waitpid(running.pid, os.WNOHANG)  # reaped: no zombie left


async def test_no_descriptor_left_for_the_pipes_fails_the_start_and_leaks_none(monkeypatch):
    launcher = Launcher(LauncherConfig("/bin/true"), 4096, "w", "test-instance")
    real_pipe2 = os.pipe2
    opened: list[int] = []

    def pipe2_until_full(flags: int) -> tuple[int, int]:
        if len(opened) >= 2:  # the stdout pipe opens, the stderr one does not
            raise OSError(errno.EMFILE, "Too many open files")
        pair = real_pipe2(flags)
        opened.extend(pair)
        return pair

    monkeypatch.setattr(os, "pipe2", pipe2_until_full)
    with pytest.raises(LaunchError, match="Too many open files"):
        launcher.start(Job(1, "t", "default"), lambda outcome: None)
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed again
