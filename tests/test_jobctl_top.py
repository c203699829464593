"""`jobctl top --once` against a real master, a real worker registered with it and the
jobs table: a frame's data (--json) and its human form."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_jobctl_jobs import db

from conftest import Daemon, jobctl, wait_for

pytestmark = pytest.mark.timeout(60)

#: "slow" runs `sleep 30`; "quick" has two slots and never runs in these tests (its
#: waiting rows are due in an hour, its finished rows are inserted as done).
TARGETS = {"slow": 2, "quick": {"low": 1, "high": 2}}


@pytest.fixture
def cluster(jobs, start_master, start_worker) -> tuple[Daemon, Daemon]:
    master = start_master()
    # No grace at teardown: the running `sleep 30` is stopped at once.
    worker = start_worker(
        TARGETS, command="sleep 30", master=master.address, shutdown_timeout=0, kill_grace=0
    )
    wait_for(lambda: "w0" in master.request("status")["workers"], 5, "w0 registered")
    return master, worker


def start_slow_job(jobs, master: Daemon, worker: Daemon) -> int:
    job_id = int(jobctl(*db(jobs, master.address), "add", "slow").stdout)
    wait_for(lambda: job_id in worker.request("status")["running"], 5, "the slow job running")
    wait_for(lambda: jobs.row(job_id)["time_started"], 5, "the slow job's start written")
    return job_id


def fill(jobs) -> None:
    """quick: 4 rows waiting (delayed), 3 done ok and 2 failed in the last minute, and
    older ones the rates leave out."""
    now = int(time.time())
    jobs.insert("quick", 4, run_at=now + 3600)
    for result, count in (("ok", 3), ("fail", 2)):
        jobs.insert("quick", count, status="done", result=result, time_started=now - 12,
                    time_finished=now - 10, duration_ms=2000)  # fmt: skip
    jobs.insert("quick", 5, status="done", result="ok", time_started=now - 400,
                time_finished=now - 300)  # fmt: skip


def top_json(jobs, master: Daemon) -> dict[str, Any]:
    return json.loads(jobctl("--json", *db(jobs, master.address), "top", "--once").stdout)


def test_top_once_json_has_the_targets_rates_and_running_jobs(jobs, cluster):
    master, worker = cluster
    fill(jobs)
    job_id = start_slow_job(jobs, master, worker)

    frame = top_json(jobs, master)
    assert frame["daemon"]["kind"] == "master"
    assert frame["daemon"]["address"] == master.address
    assert frame["daemon"]["error"] is None
    assert frame["workers"] == {"live": 1, "not_answering": {}}
    assert abs(frame["time"] - time.time()) < 5

    targets = {t["target"]: t for t in frame["targets"]}
    assert set(targets) == {"slow", "quick"}
    slow, quick = targets["slow"], targets["quick"]
    assert (slow["waiting"], slow["running"], slow["capacity"]) == (0, 1, 2)
    assert (quick["waiting"], quick["running"], quick["capacity"]) == (4, 0, 3)
    assert (quick["done_per_min"], quick["failed_per_min"], quick["p50"]) == (3, 2, 2.0)
    assert (slow["done_per_min"], slow["failed_per_min"], slow["p50"]) == (0, 0, None)

    assert frame["running"]["count"] == 1
    (running,) = frame["running"]["jobs"]
    assert running["id"] == job_id
    assert (running["target"], running["slot"], running["worker"]) == ("slow", "default", "w0")
    assert 0 <= running["running_for"] < 10

    # Through --worker, the worker's own status replaces the master's.
    url = ["--database", jobs.db.url_string, "--table", jobs.table]
    direct = json.loads(jobctl("--json", "--worker", worker.address, *url, "top", "--once").stdout)
    assert direct["daemon"]["kind"] == "worker" and direct["daemon"]["name"] == "w0"
    assert {t["target"]: t["capacity"] for t in direct["targets"]} == {"slow": 2, "quick": 3}
    assert [j["id"] for j in direct["running"]["jobs"]] == [job_id]


def test_top_once_prints_the_tables(jobs, cluster):
    master, worker = cluster
    fill(jobs)
    job_id = start_slow_job(jobs, master, worker)

    out = jobctl(*db(jobs, master.address), "top", "--once").stdout
    assert f"jobd-master {master.address}" in out and "1 live worker" in out
    for header in ("TARGET", "WAITING", "RUNNING", "CAPACITY", "DONE/MIN", "FAILED/MIN",
                   "P50", "ID", "SLOT", "WORKER", "RUNNING FOR"):  # fmt: skip
        assert header in out
    lines = out.splitlines()
    # One row of the running jobs table: the job's id, target, slot and worker.
    assert any(str(job_id) in line and "slow" in line and "w0" in line for line in lines)
    quick = next(line for line in lines if "quick" in line)
    assert [c.strip() for c in quick.split("│")[1:-1]] == ["quick", "4", "0", "3", "3", "2",
                                                           "2 s"]  # fmt: skip


def test_top_redraws_until_ctrl_c_then_exits_0(jobs, cluster):
    master, worker = cluster
    job_id = start_slow_job(jobs, master, worker)
    controller, terminal = pty.openpty()
    argv = [sys.executable, "-m", "jobctl", *db(jobs, master.address), "top", "--interval", "0.2"]
    top = subprocess.Popen(argv, stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL)
    os.close(terminal)
    output = b""

    def read(until: Callable[[bytes], bool], timeout: float) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while not until(output) and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            try:
                chunk = os.read(controller, 65536) if ready else b""
            except OSError:  # the terminal closed: jobctl exited
                return
            if ready and not chunk:
                return
            output += chunk

    try:
        # Frames keep coming: the header is drawn again at each one.
        read(lambda out: out.count(b"1 live worker") >= 3, 15)
        assert output.count(b"1 live worker") >= 3, output.decode(errors="replace")
        # Colours and cursor moves aside, the running job's row is drawn.
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))
        assert re.search(rf"│ +{job_id} │ slow +│ default │ w0 +│", text), text
        top.send_signal(signal.SIGINT)
        assert top.wait(10) == 0
        read(lambda out: False, 1)
    finally:
        if top.poll() is None:
            top.kill()
        os.close(controller)
    assert b"Traceback" not in output and b"Aborted" not in output


def test_top_without_an_answering_master_still_shows_the_table(jobs):
    """No status: the frame says why, has the table's data, and --once exits 3."""
    fill(jobs)
    frame = json.loads(jobctl("--json", *db(jobs), "top", "--once", status=3).stdout)
    assert "no answer" in frame["daemon"]["error"]
    assert frame["workers"]["live"] == 0
    (quick,) = frame["targets"]
    assert (quick["target"], quick["capacity"], quick["done_per_min"]) == ("quick", 0, 3)
    jobctl(*db(jobs), "--json", "top", status=2)  # --json needs --once
