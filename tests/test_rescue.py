"""A dead host's jobs are rescued by heartbeat and lease, fenced: real MariaDB, a real
master and real workers.  Each job's runs are recorded by the launcher (start and end
times, with the pid), so a test can show that no two runs of one job overlapped."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from jobd.store.instances import InstanceStore
from jobd.store.settle import rescue_rules

from conftest import Daemon, jobctl, wait_for
from tcp_proxy import TcpProxy

#: Short heartbeats and leases, so a test waits seconds, not minutes.
FAST = {"heartbeat_interval": 0.2, "lease": 1.0}
RESCUE_INTERVAL = 0.2

RUN_SCRIPT = """#!/bin/sh
# One run of job $1: its start and its end (also when stopped with SIGTERM) in a file.
f="$RECORD_DIR/$1"
stamp() { echo "$1 $JOBD_WORKER $(date +%s.%N) $$" >> "$f"; }
stamp start
trap 'stamp end; exit 143' TERM
sleep "$JOB_SLEEP" &
wait $!
stamp end
"""


class Runs:
    """The record of every run of every job."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "runs"
        self.dir.mkdir()
        self.script = tmp_path / "run.sh"
        self.script.write_text(RUN_SCRIPT)

    def launcher(self, sleep: float) -> dict[str, Any]:
        return {
            "command": f"sh {self.script} {{id}}",
            "env": {"RECORD_DIR": str(self.dir), "JOB_SLEEP": str(sleep)},
        }

    def of(self, job_id: int) -> list[dict[str, Any]]:
        """The runs of a job in order: worker, start, end (None: no end recorded), pid."""
        path = self.dir / str(job_id)
        runs: list[dict[str, Any]] = []
        for line in path.read_text().splitlines() if path.exists() else []:
            what, worker, when, pid = line.split()
            if what == "start":
                runs.append({"worker": worker, "start": float(when), "end": None, "pid": int(pid)})
            else:
                run = next(r for r in runs if r["pid"] == int(pid) and r["end"] is None)
                run["end"] = float(when)
        return runs

    def started(self, ids: list[int], worker: str) -> bool:
        return all(any(r["worker"] == worker for r in self.of(i)) for i in ids)

    def assert_no_overlap(self, ids: list[int], killed_at: float | None = None) -> None:
        """No run of a job began before the one before it had ended (a run killed with
        its host ended when it was killed)."""
        for job_id in ids:
            runs = self.of(job_id)
            for before, after in itertools.pairwise(runs):
                end = before["end"] if before["end"] is not None else killed_at
                assert end is not None, f"job {job_id}: a run with no end: {runs}"
                assert end <= after["start"], f"job {job_id}: runs overlap: {runs}"


def host_dies(worker: Daemon, runs: Runs, ids: list[int]) -> float:
    """kill -9 the worker and, as a host's death would, the processes of its jobs."""
    worker.kill()
    for job_id in ids:
        for run in runs.of(job_id):
            if run["worker"] == "w0" and run["end"] is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run["pid"], signal.SIGKILL)
    return time.time()


def instance_row(jobs: Any, name: str) -> dict[str, Any]:
    rows = jobs.execute(
        f"SELECT instance, state, rescued_by, heartbeat + lease FROM `{jobs.table}_workers`"
        " WHERE name = %s ORDER BY started", (name,),
    )  # fmt: skip
    instance, state, rescued_by, lease_end = rows[0]
    return {"instance": instance, "state": state, "rescued_by": rescued_by,
            "lease_end": float(lease_end), "count": len(rows)}  # fmt: skip


def run_jobs(jobs: Any, worker: Daemon, runs: Runs, count: int) -> tuple[list[int], str]:
    """`count` jobs of target t running on the worker; their ids, and its instance."""
    ids = jobs.insert("t", count)
    worker.request("poll")
    wait_for(lambda: runs.started(ids, "w0"), 15, f"{count} jobs running on w0")
    return ids, worker.request("status")["instance"]["instance"]


def proxied(jobs: Any) -> tuple[TcpProxy, str]:
    """A TCP proxy to the database, and the database URL through it."""
    url = jobs.db.url
    proxy = TcpProxy((url.host, url.port))
    return proxy, jobs.db.url_string.replace(f":{url.port}/", f":{proxy.port}/")


@pytest.fixture
def rescuing_master(jobs, start_master):
    return start_master(
        database=jobs.db.url_string, table=jobs.table, rescue_interval=RESCUE_INTERVAL
    )


def rescues(master: Daemon) -> dict[str, Any]:
    return master.request("status")["rescues"]


@pytest.mark.timeout(90)
def test_a_killed_worker_that_does_not_come_back_has_its_jobs_run_elsewhere_once_at_a_time(
    jobs, rescuing_master, start_worker, tmp_path
):
    runs = Runs(tmp_path)
    master = rescuing_master
    targets = {"t": {"concurrency": 20, "max_attempts": 3}}
    w0 = start_worker(targets, launcher=runs.launcher(30), master=master.address, **FAST)
    running, instance = run_jobs(jobs, w0, runs, 20)
    # 20 more it holds as a claim ahead leaves them: accepted, in its instance's name.
    accepted = jobs.insert("t", 20, status="accepted", worker="w0", instance=instance)

    dead_at = host_dies(w0, runs, running)
    w1 = start_worker(targets, launcher=runs.launcher(0.05), master=master.address, **FAST)
    ids = running + accepted
    deadline = FAST["lease"] + RESCUE_INTERVAL + 5
    rows = jobs.wait_done(ids, timeout=deadline)
    assert time.time() - dead_at <= deadline + 1
    assert w1.request("status")["name"] == "w1"
    for row in rows:
        assert (row["status"], row["result"], row["worker"]) == ("done", "ok", "w1"), row
    by_id = {r["id"]: r for r in rows}
    for job_id in running:
        row = by_id[job_id]
        assert (row["attempts"], row["rescues"]) == (2, 1)
        assert (
            "worker w0 (" in row["attempt_log"] and "stopped heartbeating at" in row["attempt_log"]
        )
        assert row["attempt_log"].endswith("; rescued by jobd-master\n")
    for job_id in accepted:
        assert (by_id[job_id]["attempts"], by_id[job_id]["rescues"]) == (1, 0)
    row = instance_row(jobs, "w0")
    assert (row["instance"], row["state"], row["rescued_by"]) == (
        instance,
        "rescued",
        "jobd-master",
    )
    counts = rescues(master)
    assert (counts["instances"], counts["released"], counts["retried"]) == (1, 20, 20)
    runs.assert_no_overlap(ids, killed_at=dead_at)
    # jobctl workers: the instances, the running one first, and the jobs each holds.
    db = ["--database", jobs.db.url_string, "--table", jobs.table]
    listed = json.loads(jobctl("--json", *db, "workers").stdout)
    assert [(w["name"], w["state"], w["held"]) for w in listed] == [
        ("w1", "running", 0), ("w0", "rescued", 0),
    ]  # fmt: skip
    assert listed[1]["rescued_by"] == "jobd-master" and listed[0]["age"] < FAST["lease"]
    rows = jobctl(*db, "workers").stdout.splitlines()
    assert rows[0].split()[:4] == ["NAME", "HOST", "PID", "STATE"]
    assert rows[1].split()[0] == "w1" and " rescued " in rows[2]


@pytest.mark.timeout(90)
def test_a_worker_cut_from_the_database_stops_its_jobs_before_its_lease_ends(
    jobs, rescuing_master, start_worker, tmp_path
):
    runs = Runs(tmp_path)
    master = rescuing_master
    proxy, through_proxy = proxied(jobs)
    fence = {"heartbeat_interval": 0.2, "lease": 2.0, "kill_grace": 0.3}
    targets = {"t": {"concurrency": 5, "max_attempts": 3}}
    try:
        w0 = start_worker(
            targets, launcher=runs.launcher(30), master=master.address, **fence,
            database=through_proxy,
        )  # fmt: skip
        ids, first = run_jobs(jobs, w0, runs, 5)
        proxy.cut()
        wait_for(lambda: rescues(master)["instances"] == 1, 10, "the rescue of w0")
        lease_end = instance_row(jobs, "w0")["lease_end"]
        # Every run of w0 was stopped (SIGTERM, its end recorded) before the lease ran out.
        for job_id in ids:
            (run,) = runs.of(job_id)
            assert run["end"] is not None and run["end"] < lease_end, (run, lease_end)
        assert w0.request("status")["instance"]["fenced"] is True

        start_worker(targets, launcher=runs.launcher(0.05), master=master.address)
        rows = jobs.wait_done(ids, timeout=10)
        assert all((r["result"], r["worker"], r["rescues"]) == ("ok", "w1", 1) for r in rows)

        proxy.restore()
        # w0's late writes (the outcomes of the runs it stopped) change nothing, and it
        # comes back as a new instance.
        wait_for(lambda: w0.request("status")["instance"]["instances"] == 2, 15, "a new instance")
        status = w0.request("status")
        assert status["instance"]["instance"] != first and not status["instance"]["fenced"]
        wait_for(lambda: w0.request("status")["fenced_writes"] >= 5, 10, "the fenced writes")
    finally:
        proxy.close()
    assert jobs.rows(f"id IN ({', '.join(map(str, ids))})") == rows  # unchanged
    assert instance_row(jobs, "w0")["count"] == 2
    runs.assert_no_overlap(ids)


@pytest.mark.timeout(60)
def test_a_worker_cut_off_for_less_than_its_lease_stops_its_jobs_then_goes_on(
    jobs, start_worker, tmp_path
):
    runs = Runs(tmp_path)
    proxy, through_proxy = proxied(jobs)
    # The fence closes at 1.5 s (half the lease) and stops the jobs then (lease -
    # interval - kill_grace is earlier); the outage ends before the lease does.
    fence = {"heartbeat_interval": 0.2, "lease": 3.0, "kill_grace": 1.5}
    try:
        w0 = start_worker(
            {"t": {"concurrency": 2, "max_attempts": 2, "retry_backoff": 0}},
            launcher=runs.launcher(30), **fence, database=through_proxy,
        )  # fmt: skip
        ids, instance = run_jobs(jobs, w0, runs, 2)
        proxy.cut()
        wait_for(lambda: all(r["end"] for i in ids for r in runs.of(i)), 5, "the jobs stopped")
        assert w0.request("status")["instance"]["fenced"] is True
        proxy.restore()
        wait_for(lambda: not w0.request("status")["instance"]["fenced"], 5, "the fence open")
        # The stopped runs are recorded as failed attempts, and run again here.
        wait_for(lambda: all(len(runs.of(i)) == 2 for i in ids), 10, "the second runs")
        status = w0.request("status")
        assert status["instance"]["instance"] == instance and status["instance"]["instances"] == 1
        assert status["fenced_writes"] == 0
    finally:
        proxy.close()
    rows = jobs.rows(f"id IN ({', '.join(map(str, ids))})")
    for row in rows:
        assert (row["status"], row["attempts"], row["instance"]) == ("running", 2, instance)
        assert "could not write its heartbeat" in row["attempt_log"]
    runs.assert_no_overlap(ids)


@pytest.mark.timeout(60)
def test_a_live_worker_running_a_job_longer_than_its_lease_is_never_rescued(
    jobs, rescuing_master, start_worker, tmp_path
):
    runs = Runs(tmp_path)
    w0 = start_worker({"t": 1}, launcher=runs.launcher(3), master=rescuing_master.address, **FAST)
    (job,) = jobs.insert("t")
    w0.request("poll")
    wait_for(lambda: runs.started([job], "w0"), 10, "the job running")
    sweeps = rescues(rescuing_master)["sweeps"]
    (row,) = jobs.wait_done([job], timeout=10)
    # The rescuer looked many times while the job ran three leases long.
    assert rescues(rescuing_master)["sweeps"] >= sweeps + 5
    assert (row["result"], row["attempts"], row["rescues"], row["worker"]) == ("ok", 1, 0, "w0")
    assert rescues(rescuing_master)["instances"] == 0
    assert instance_row(jobs, "w0")["state"] == "running"
    assert len(runs.of(job)) == 1


@pytest.mark.timeout(60)
def test_a_worker_shutting_down_with_jobs_still_finishing_is_never_rescued(
    jobs, rescuing_master, start_worker, tmp_path
):
    runs = Runs(tmp_path)
    w0 = start_worker({"t": 2}, launcher=runs.launcher(2.5), master=rescuing_master.address,
                      shutdown_timeout=20, **FAST)  # fmt: skip
    ids = jobs.insert("t", 2)
    w0.request("poll")
    wait_for(lambda: runs.started(ids, "w0"), 10, "the jobs running")
    sweeps = rescues(rescuing_master)["sweeps"]
    w0.signal(signal.SIGTERM)
    assert w0.process is not None and w0.process.wait(20) == 0
    assert rescues(rescuing_master)["sweeps"] >= sweeps + 5  # looked while they finished
    rows = jobs.wait_done(ids, timeout=1)
    assert all((r["result"], r["attempts"], r["rescues"]) == ("ok", 1, 0) for r in rows)
    assert rescues(rescuing_master)["instances"] == 0
    assert instance_row(jobs, "w0")["state"] == "stopped"


def dead_instance(jobs: Any, name: str, running: int, accepted: int) -> tuple[str, list[int]]:
    """A running instance whose lease ran out, holding rows as a worker leaves them."""
    instance = os.urandom(8).hex()
    jobs.execute(
        f"INSERT INTO `{jobs.table}_workers` (instance, name, host, pid, version, targets,"
        " started, heartbeat, lease) VALUES (%s, %s, 'gone', 1, '0.2.0', %s,"
        " UNIX_TIMESTAMP(NOW(3)) - 60, UNIX_TIMESTAMP(NOW(3)) - 60, 1)",
        (instance, name, '{"t": {"max_attempts": 2}}'),
    )
    ids = jobs.insert("t", running, status="running", worker=name, instance=instance, attempts=1)
    ids += jobs.insert("t", accepted, status="accepted", worker=name, instance=instance)
    return instance, ids


@pytest.mark.timeout(60)
async def test_two_rescuers_at_once_settle_each_row_once(jobs):
    stores = [InstanceStore(jobs.db.url, jobs.table, pool_size=1) for _ in range(2)]
    for store in stores:
        await store.connect()
    try:
        for round_ in range(10):
            _, ids = dead_instance(jobs, f"dead{round_}", running=3, accepted=2)
            (dead,) = [d for d in await stores[0].dead() if d.name == f"dead{round_}"]
            results = await asyncio.gather(*(
                store.rescue(dead, who, f"rescued by {who}")
                for store, who in zip(stores, ("a", "b"), strict=True)
            ))  # fmt: skip
            settled = [r for r in results if r is not None]
            assert len(settled) == 1, results
            assert (settled[0].released, len(settled[0].retried)) == (2, 3)
            rows = jobs.rows(f"id IN ({', '.join(map(str, ids))})")
            assert all(r["status"] == "waiting" and r["instance"] is None for r in rows)
            retried = [r for r in rows if r["attempts"] == 1]
            assert [r["rescues"] for r in retried] == [1, 1, 1]
            assert all(r["attempt_log"].count("rescued by") == 1 for r in retried)
    finally:
        for store in stores:
            await store.close()


def test_the_rescue_rules_of_a_target():
    decide = rescue_rules({"t": {"max_attempts": 3, "max_rescues": 2}, "f": {"on_rescue": "fail"}})
    assert decide("t", 1, 0) is None and decide("t", 2, 1) is None  # runs again
    assert decide("t", 3, 0) == ""  # no starts left
    assert decide("t", 1, 2) == "failed after 3 rescues (max_rescues 2)"  # a poison pill
    assert decide("f", 1, 0) == "the target's on_rescue is fail"
    assert decide("unknown", 1, 0) == ""  # max_attempts 1 by default


@pytest.mark.timeout(90)
def test_a_job_whose_runs_kill_their_worker_fails_after_max_rescues(
    jobs, rescuing_master, start_worker
):
    targets = {"t": {"concurrency": 1, "max_attempts": 10, "max_rescues": 2}}
    (job,) = jobs.insert("t")
    for n in range(3):
        # It claims the waiting job as it starts, and the job kills it at once.
        killer = start_worker(
            targets, command="sh -c 'kill -9 $PPID'", master=rescuing_master.address,
            name=f"k{n}", wait=False, **FAST,
        )  # fmt: skip
        assert killer.process is not None and killer.process.wait(10) == -signal.SIGKILL
        wait_for(lambda n=n: rescues(rescuing_master)["instances"] == n + 1, 10, "the rescue")
    row = jobs.row(job)
    assert (row["status"], row["result"], row["rescues"], row["attempts"]) == ("done", "fail", 3, 3)
    assert "failed after 3 rescues (max_rescues 2)" in row["stderr"]
    assert "worker k2 (" in row["stderr"]
