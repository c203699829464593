"""`jobctl recover WORKER` against a real master and real workers: it refuses while the
worker is alive in the master's registry (or the master cannot be asked), and settles
the rows of a worker killed with -9 by the rules of a worker's own start-up recovery."""

from __future__ import annotations

import json

import pytest

from conftest import free_port, jobctl, wait_for

REASON = "worker w0 stopped while the job was running"


@pytest.fixture(autouse=True)
def _no_database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBD_DATABASE_URL", raising=False)


#: w0's heartbeat and lease: short, so a test can wait for its lease to run out.
LEASE = {"heartbeat_interval": 0.5, "lease": 3.0}


def kill_9_with_jobs_in_flight(jobs, start_master, start_worker, max_attempts: int):
    """A master, and a worker w0 killed with -9 while running 2 jobs; plus a row it had
    accepted and a manual row it had reserved (set by hand, with no instance recorded, as
    a jobd older than the workers table leaves them: the worker claims only what starts
    at once).  Returns (master, running ids, accepted id, manual id)."""
    master = start_master(ping_interval=0.3)
    targets = {"t": {"concurrency": 2, "max_attempts": max_attempts}}
    w0 = start_worker(targets, command="sleep 3", master=master.address, kill_grace=1, **LEASE)
    wait_for(lambda: "w0" in master.request("status")["workers"], 5, "w0 registered")
    running = jobs.insert("t", 2)
    w0.request("poll")
    wait_for(lambda: jobs.count("status = 'running'") == 2, 5, "2 jobs running")
    (accepted,) = jobs.insert("t", status="accepted", worker="w0")
    (manual,) = jobs.insert("t", status="manual", worker="w0")
    return master, w0, running, accepted, manual


def test_recover_refuses_a_live_worker_then_settles_a_killed_ones_rows(
    jobs, start_master, start_worker
):
    master, w0, running, accepted, manual = kill_9_with_jobs_in_flight(
        jobs, start_master, start_worker, max_attempts=1
    )
    db = ["--master", master.address, "--database", jobs.db.url_string, "--table", jobs.table]

    refused = jobctl(*db, "recover", "w0", status=1)
    assert "worker w0 is alive in the master's registry" in refused.stderr
    assert "use --force" in refused.stderr
    assert jobs.count("status = 'running' AND worker = 'w0'") == 2  # nothing touched

    w0.kill()  # kill -9
    wait_for(lambda: "w0" not in master.request("status")["workers"], 5, "w0 dropped")
    # Its instance still holds its lease: refused until the lease has run out.
    refused = jobctl(*db, "recover", "w0", status=1)
    assert "still holds its lease of 3 s: it may be alive" in refused.stderr
    assert jobs.count("status = 'running' AND worker = 'w0'") == 2  # nothing touched
    wait_for(lambda: jobs.execute(
        f"SELECT heartbeat + lease < UNIX_TIMESTAMP(NOW(3)) FROM `{jobs.table}_workers`"
        " WHERE name = 'w0'")[0][0], 5, "w0's lease to run out")  # fmt: skip
    # A second worker serving t, idle (no safety polls): only the poke that follows the
    # recovery can make it claim the rows given back.
    w1 = start_worker({"t": 2}, command="/bin/true", master=master.address)
    wait_for(lambda: "w1" in master.request("status")["workers"], 5, "w1 registered")
    assert jobs.count(f"id = {accepted} AND status = 'accepted'") == 1

    out = jobctl(*db, "recover", "w0").stdout
    assert "running rows failed (no starts left):        " + ", ".join(map(str, running)) in out
    assert "queued rows given back (waiting, or manual): 2" in out
    rows = {r["id"]: r for r in jobs.rows()}
    for job_id in running:
        row = rows[job_id]
        assert (row["status"], row["result"], row["attempts"]) == ("done", "fail", 1)
        assert f"jobd: {REASON}" in row["stderr"]
    assert (rows[manual]["status"], rows[manual]["worker"]) == ("manual", None)
    # The accepted row went back to waiting, and the poke had w1 run it.
    done = jobs.wait_done([accepted], timeout=5)[0]
    assert (done["result"], done["worker"], done["attempts"]) == ("ok", "w1", 1)
    assert w1.request("status")["name"] == "w1"

    # Nothing left to settle: a second run changes nothing.
    again = json.loads(jobctl("--json", *db, "recover", "w0").stdout)
    assert again == {"worker": "w0", "released": 0, "retried": [], "failed": []}


def test_recover_with_attempts_left_and_without_a_master(jobs, start_master, start_worker):
    master, w0, running, accepted, manual = kill_9_with_jobs_in_flight(
        jobs, start_master, start_worker, max_attempts=2
    )
    w0.kill()
    db = ["--database", jobs.db.url_string, "--table", jobs.table]
    master.stop()

    # The master cannot be asked: refused (exit 3, no answer), saying why.
    refused = jobctl("--timeout", 0.5, "--master", master.address, *db, "recover", "w0", status=3)
    assert "cannot ask the master whether worker w0 is alive" in refused.stderr
    assert "within 0.5 s" in refused.stderr
    assert jobs.count("worker = 'w0'") == 4

    # --force: no question asked; --max-attempts 2 sends the running rows back.
    elsewhere = f"tcp://127.0.0.1:{free_port()}"
    reply = json.loads(
        jobctl("--json", "--master", elsewhere, *db, "recover", "w0", "--force",
               "--max-attempts", 2).stdout
    )  # fmt: skip
    assert reply == {"worker": "w0", "released": 2, "retried": sorted(running), "failed": []}
    rows = {r["id"]: r for r in jobs.rows()}
    for job_id in running:
        row = rows[job_id]
        assert (row["status"], row["worker"], row["attempts"]) == ("waiting", None, 1)
        assert row["attempt_log"] == f"attempt 1: {REASON}\n"
    assert rows[accepted]["status"] == "waiting" and rows[manual]["status"] == "manual"
    assert jobs.count("worker = 'w0'") == 0


def test_recover_usage_errors(jobs, tmp_path):
    # No database anywhere: a usage error naming the three sources.
    empty = tmp_path / "jobctl.yaml"
    empty.write_text("{}\n")
    out = jobctl("--config", empty, "recover", "w0", status=2)
    assert "give --database URL, set JOBD_DATABASE_URL or put database:" in out.stderr
    # A bad URL is reported without its password.
    out = jobctl("--database", "mysql://u:hunter2@h:x/db", "recover", "w0", status=2)
    assert "--database: malformed URL" in out.stderr and "hunter2" not in out.stderr
    out = jobctl("--worker", "--database", jobs.db.url_string, "recover", "w0", status=2)
    assert "recover is a master command" in out.stderr
    out = jobctl("--database", jobs.db.url_string, "recover", "bad name", status=2)
    assert "not a worker name" in out.stderr
    # A table that does not exist: an error naming it, after the master check is skipped.
    out = jobctl("--database", jobs.db.url_string, "--table", "nope", "recover", "w0",
                 "--force", status=1)  # fmt: skip
    assert "table nope: the table does not exist" in out.stderr
