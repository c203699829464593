"""Never lose a job: crash recovery, graceful shutdown, reload, database outages,
timeouts and retries, each injected for real into a real jobd process."""

from __future__ import annotations

import signal
import time

import pytest
import yaml

from jobd.client import RequestError
from jobd.worker.leftovers import find_leftovers

from conftest import claimed, wait_for, wait_idle
from tcp_proxy import TcpProxy


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reloads(worker) -> dict:
    return worker.request("status")["reloads"]


def shutting_down(worker) -> bool:
    """Whether the worker has taken a stop signal: it then refuses manual runs."""
    try:
        worker.request("run-manual", {"ids": [4_000_000_000]}, timeout=2)
    except RequestError as exc:
        return exc.code == "unavailable"
    return False


def processes_running(worker) -> int:
    """Jobs whose process the worker has started (a row says 'running' from its claim on,
    a moment before its process exists)."""
    return len(worker.request("status")["running"])


# Takes a per-job lock: a second copy of a job started while the first still runs
# fails at once (flock -n), so "no job ran twice at the same time" shows in the rows.
LOCKED = "flock -n {dir}/{{id}}.lock sh -c 'echo ran {{id}}; sleep {sleep}'"


@pytest.mark.timeout(90)
def test_kill_9_with_50_jobs_in_flight_then_restart(jobs, start_worker, tmp_path):
    targets = {
        "again": {"concurrency": 25, "max_attempts": 2},  # retried after the crash
        "once": 25,  # max_attempts 1: failed with the reason
    }
    command = LOCKED.format(dir=tmp_path, sleep=3)
    worker = start_worker(targets, command=command, kill_grace=1)
    again = jobs.insert("again", 25)
    once = jobs.insert("once", 25)
    worker.request("poll")
    wait_for(lambda: len(worker.request("status")["running"]) == 50, 20, "50 processes running")
    # Each job is three processes (flock, sh, sleep) once it is under way; the worker
    # starts a job faster than its chain forks, so wait for all 150 before the kill.
    db = jobs.db.url
    instance = f"w0@{db.host}:{db.port}/{db.database}/{jobs.table}"
    leftovers = wait_for(
        lambda: len(found := find_leftovers(instance)) == 150 and found,
        20, "the 150 job processes",
    )  # fmt: skip
    worker.kill()  # kill -9: its 50 job processes live on, orphaned
    killed = time.monotonic()

    assert jobs.count("status IN ('accepted', 'running')") == 50
    assert all(alive(pid) for pid in leftovers)
    worker.start()  # same name, same config: it recovers its rows, then answers
    # flock, sh and sleep of each of the 50 jobs were still running: all were stopped
    # before the worker answered, well before their 3 s were up.
    recovered = time.monotonic() - killed
    assert recovered < 3, recovered
    assert not any(alive(pid) for pid in leftovers)
    rows = {r["id"]: r for r in jobs.wait_done(again + once, timeout=60)}

    for job_id in once:
        row = rows[job_id]
        assert (row["status"], row["result"], row["attempts"]) == ("done", "fail", 1)
        assert "worker w0 stopped while the job was running" in row["stderr"]
    for job_id in again:
        row = rows[job_id]
        # Ran again to success: the lock proves the first run was gone by then.
        assert (row["status"], row["result"], row["attempts"]) == ("done", "ok", 2), row
        assert row["stdout"] == f"ran {job_id}\n"
        assert row["attempt_log"] == "attempt 1: worker w0 stopped while the job was running\n"


def test_graceful_shutdown_gives_back_queued_rows_lets_running_finish_then_stops_the_rest(
    jobs, start_worker
):
    targets = {
        "short": 1,
        "retry": {"concurrency": 1, "max_attempts": 2},
        "fail": 1,
    }
    worker = start_worker(
        targets,
        command="sh -c 'if [ {target} = short ]; then sleep 0.5; else sleep 60; fi'",
        shutdown_timeout=1.5,
        kill_grace=1,
    )
    short, short_waiting = jobs.insert("short", 2)
    (retry,) = jobs.insert("retry")
    (fail,) = jobs.insert("fail")
    worker.request("poll")
    wait_for(lambda: processes_running(worker) == 3, 10, "3 jobs running")
    began = time.monotonic()
    assert worker.stop() == 0
    # It let the running jobs go on for shutdown_timeout, then stopped the rest quickly.
    assert 1.5 <= time.monotonic() - began < 10

    rows = {r["id"]: r for r in jobs.rows()}
    assert rows[short]["result"] == "ok"  # finished within shutdown_timeout
    assert rows[short_waiting]["status"] == "waiting"  # never started: left for others
    assert rows[short_waiting]["worker"] is None
    assert rows[retry]["status"] == "waiting"  # attempts left: back for another worker
    assert "worker w0 stopped while the job was running" in rows[retry]["attempt_log"]
    assert (rows[fail]["status"], rows[fail]["result"], rows[fail]["sig"]) == (
        "done",
        "fail",
        "SIGTERM",
    )
    assert "jobd: worker w0 stopped while the job was running" in rows[fail]["stderr"]
    assert jobs.count("status IN ('accepted', 'running')") == 0


def test_second_signal_takes_the_fast_path(jobs, start_worker):
    worker = start_worker(
        {"t": 1}, command="sh -c 'trap \"\" TERM; sleep 60'", shutdown_timeout=60, kill_grace=60
    )
    (job_id,) = jobs.insert("t")
    worker.request("poll")
    wait_for(lambda: processes_running(worker) == 1, 10, "job running")
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    # The first signal is taken (the worker refuses manual runs from then on) and its
    # shutdown waits for the job; only then the second.
    wait_for(lambda: shutting_down(worker), 5, "the first signal taken")
    assert processes_running(worker) == 1 and worker.process.poll() is None
    worker.signal(signal.SIGINT)
    assert worker.process.wait(15) == 0
    assert time.monotonic() - began < 10
    row = jobs.row(job_id)
    assert (row["status"], row["result"], row["sig"]) == ("done", "fail", "SIGKILL")


def test_reload_under_load_applies_targets_and_launcher_without_stopping_a_running_job(
    jobs, start_worker
):
    worker = start_worker({"t": 1}, command="sh -c 'echo v1; sleep 0.1'")
    first = jobs.insert("t", 10)
    worker.request("poll")
    wait_for(lambda: processes_running(worker) == 1, 10, "a job running")

    config = yaml.safe_load(worker.config_path.read_text())
    config["targets"] = {"t": 3, "u": {"a": 1}}
    config["launcher"] = {"command": "sh -c 'echo v2; sleep 0.1'"}
    config["log"] = {"level": "debug"}
    worker.config_path.write_text(yaml.safe_dump(config))
    worker.signal(signal.SIGHUP)
    wait_for(lambda: reloads(worker)["applied"] == 1, 10, "the reload")
    status = worker.request("status")
    assert status["reloads"] == {"applied": 1, "refused": 0, "error": None}
    assert status["targets"]["u"]["slots"] == {"a": {"concurrency": 1, "queued": 0, "running": 0}}
    assert status["targets"]["t"]["slots"]["default"]["concurrency"] == 3

    second = jobs.insert("u", 2, slot="a")
    worker.request("poll")
    rows = jobs.wait_done(first + second, timeout=30)
    assert all(r["result"] == "ok" for r in rows)  # nothing dropped
    outputs = {r["id"]: r["stdout"] for r in rows}
    assert {outputs[i] for i in second} == {"v2\n"}  # the new launcher
    assert outputs[first[0]] == "v1\n"  # the job running at reload kept its process
    # The log level's effect shows only in the log: at debug, each request is logged.
    assert "request status" in worker.log()

    # An invalid config is refused and the running one stays.
    worker.config_path.write_text(yaml.safe_dump({**config, "targets": {"t": 0}}))
    worker.signal(signal.SIGHUP)
    wait_for(lambda: reloads(worker)["refused"] == 1, 10, "the refusal")
    status = worker.request("status")
    assert "targets.t: concurrency must be at least 1" in status["reloads"]["error"]
    assert status["reloads"]["applied"] == 1
    assert set(status["targets"]) == {"t", "u"}
    assert status["targets"]["t"]["slots"]["default"]["concurrency"] == 3

    # So is one that changes what needs a restart.
    config["name"] = "other"
    worker.config_path.write_text(yaml.safe_dump(config))
    worker.signal(signal.SIGHUP)
    wait_for(lambda: reloads(worker)["refused"] == 2, 10, "the refusal")
    assert reloads(worker) == {
        "applied": 1, "refused": 2, "error": "name cannot change on reload; restart jobd",
    }  # fmt: skip
    assert worker.request("ping")["name"] == "w0"


@pytest.mark.timeout(120)
def test_database_cut_for_10_s_in_the_middle_of_1000_jobs(jobs, start_worker, tmp_path):
    url = jobs.db.url
    ended = tmp_path / "ended"  # each job's id once its process is done
    proxy = TcpProxy((url.host, url.port))
    try:
        through_proxy = jobs.db.url_string.replace(f":{url.port}/", f":{proxy.port}/")
        worker = start_worker(
            {"t": 8}, command=f"sh -c 'echo out-{{id}}; sleep 0.03; echo {{id}} >> {ended}'",
            database=through_proxy,
        )  # fmt: skip
        ids = jobs.insert("t", 1000)
        worker.request("poll")
        wait_for(lambda: jobs.count("status = 'done'") >= 300, 60, "300 jobs done")
        proxy.cut()
        cut = time.monotonic()
        # For the 10 s of the cut the worker answers throughout; once a write that was on
        # its way at the cut has landed, nothing more reaches the table.
        done = []
        while time.monotonic() - cut < 10:
            status = worker.request("status", timeout=2)
            assert status["name"] == "w0"  # still serving while the database is away
            done.append(jobs.count("status = 'done'"))
            time.sleep(0.5)
        assert len(set(done[2:])) == 1, done
        # Jobs went on and ended: their rows still say running, the worker runs none of
        # them, so their outcomes wait in the worker's memory.
        assert not status["running"]  # nothing could start: claims need the database
        finished = {int(line) for line in ended.read_text().split()}
        held = finished & {r["id"] for r in jobs.rows("status = 'running'")}
        assert held, "no outcome was held during the cut"
        proxy.restore()
        rows = jobs.wait_done(ids, timeout=60)
        wait_for(lambda: worker.request("status")["pending_writes"] == 0, 10, "all written")
    finally:
        proxy.close()
    assert len(rows) == 1000
    for row in rows:
        assert (row["status"], row["result"], row["attempts"]) == ("done", "ok", 1), row
        assert row["stdout"] == f"out-{row['id']}\n"


def test_polls_are_answered_while_the_database_does_not_answer(jobs, start_worker):
    """A database that has stopped answering (connections open, nothing comes back)
    holds up neither the replies to polls nor anything else the worker answers, and no
    poll is lost: the jobs run, each once, when the server answers again."""
    url = jobs.db.url
    proxy = TcpProxy((url.host, url.port))
    try:
        through_proxy = jobs.db.url_string.replace(f":{url.port}/", f":{proxy.port}/")
        worker = start_worker({"t": 2}, database=through_proxy)
        worker.request("ping")
        wait_idle(worker)  # its start-up claim is over: what comes next is the poll's
        proxy.hold()
        ids = jobs.insert("t", 3)  # straight to the server, not through the proxy
        assert worker.request("poll", {"targets": ["t"]}, timeout=2.0) == {"targets": ["t"]}
        # The poll's claim was sent, and its query waits in the proxy: nothing is taken.
        assert proxy.client_held.wait(5), "the claim's query never came"
        assert jobs.count("status = 'waiting'") == 3
        assert worker.request("status", timeout=2.0)["wanted"] == ["t"]
        for _ in range(20):  # more polls while that claim is stuck
            assert worker.request("poll", {"targets": ["t"]}, timeout=2.0) == {"targets": ["t"]}
        assert worker.request("status", timeout=2.0)["name"] == "w0"
        proxy.release()
        rows = jobs.wait_done(ids, timeout=30)
    finally:
        proxy.close()
    assert [(r["status"], r["result"], r["attempts"]) for r in rows] == [("done", "ok", 1)] * 3
    assert claimed(worker) == {"by_target": 3, "named": 0}


def test_a_claim_by_id_whose_answer_is_lost_runs_its_job_once(jobs, start_worker, tmp_path):
    """The claim of a row named in a poll went through, but its answer never came (the
    connection dropped first): the row says running in the worker's name while the
    worker does not hold it.  Its next claim gives the row back and takes it again: the
    job runs once, and counts one start."""
    url = jobs.db.url
    log = tmp_path / "ran"
    proxy = TcpProxy((url.host, url.port))
    try:
        through_proxy = jobs.db.url_string.replace(f":{url.port}/", f":{proxy.port}/")
        worker = start_worker(
            {"t": 1}, command=f"sh -c 'echo {{id}} >> {log}'", database=through_proxy
        )
        wait_idle(worker)
        (job_id,) = jobs.insert("t")
        proxy.hold_answers()
        worker.request("poll", {"targets": ["t"], "ids": [job_id]})
        wait_for(lambda: jobs.row(job_id)["status"] == "running", what="the claim done")
        # Its answer has come back from the server and waits in the proxy: the worker
        # does not know it took the row, and so cannot have started it.
        assert proxy.answer_held.wait(5), "the claim's answer never came"
        assert not log.exists()
        proxy.cut()  # the answer is lost with the connection
        proxy.release()
        proxy.restore()
        (row,) = jobs.wait_done([job_id], timeout=30)
    finally:
        proxy.close()
    assert (row["result"], row["attempts"], row["worker"]) == ("ok", 1, "w0")
    assert log.read_text().split() == [str(job_id)]
    # The claim by id counted nothing (its answer never came); the row, given back with
    # its start taken off (attempts 1 above), was claimed again by target.
    assert claimed(worker) == {"by_target": 1, "named": 0}


def test_timeout_terminates_then_kills(jobs, start_worker):
    worker = start_worker(
        {"t": {"concurrency": 2, "timeout": 0.5}},
        command="sh -c 'if [ {id} = $STUBBORN ]; then trap \"\" TERM; fi; sleep 30'",
        kill_grace=0.5,
    )
    polite, stubborn = jobs.insert("t", 2)
    config = yaml.safe_load(worker.config_path.read_text())
    config["launcher"]["env"] = {"STUBBORN": str(stubborn)}
    worker.config_path.write_text(yaml.safe_dump(config))
    worker.signal(signal.SIGHUP)
    wait_for(lambda: reloads(worker)["applied"] == 1, 10, "reload")
    worker.request("poll")
    rows = {r["id"]: r for r in jobs.wait_done([polite, stubborn], timeout=15)}
    assert (rows[polite]["result"], rows[polite]["sig"]) == ("fail", "SIGTERM")
    assert (rows[stubborn]["result"], rows[stubborn]["sig"]) == ("fail", "SIGKILL")
    for row in rows.values():
        assert "jobd: timed out after 0.5 s" in row["stderr"]
        assert row["time_finished"] - row["time_started"] < 5


def test_retries_with_backoff_keep_the_last_output_and_log_each_attempt(
    jobs, start_worker, tmp_path
):
    # Fails until its third attempt; the count lives in a file per job.
    command = (
        f"sh -c 'n=$(cat {tmp_path}/{{id}} 2>/dev/null || echo 0); n=$((n+1)); "
        f"echo $n > {tmp_path}/{{id}}; echo try $n; echo oops $n >&2; "
        f"[ {{target}} = flaky ] && [ $n -ge 3 ]'"
    )
    options = {"concurrency": 2, "max_attempts": 3, "retry_backoff": 0.4}
    worker = start_worker({"flaky": options, "broken": options}, command=command)
    (flaky,) = jobs.insert("flaky")
    (broken,) = jobs.insert("broken")
    began = time.time()
    worker.request("poll")
    rows = {r["id"]: r for r in jobs.wait_done([flaky, broken], timeout=20)}
    took = time.time() - began

    assert (rows[flaky]["result"], rows[flaky]["attempts"]) == ("ok", 3)
    assert rows[flaky]["stdout"] == "try 3\n"  # the last attempt's output
    assert (rows[broken]["result"], rows[broken]["attempts"]) == ("fail", 3)
    assert rows[broken]["stderr"] == "oops 3\n"
    for row in rows.values():
        lines = row["attempt_log"].splitlines()
        assert len(lines) == 2
        assert lines[0].startswith("attempt 1/3: exit code 1 after")
        assert lines[1].startswith("attempt 2/3: exit code 1 after")
    # Backoff 0.4 s then 0.8 s, each at least halved by jitter: 0.6 s at the least.
    assert took >= 0.6


def test_a_worker_behind_a_stopped_purge_says_so_and_runs_each_job_once(
    jobs, start_worker, tmp_path
):
    """A transaction left open on the server (here: a consistent snapshot) stops purge,
    and 30,000 jobs run since leave their dead entries in the claim index: the worker's
    claims of the target turn slow, it says so after three of them and claims from the
    first claimable row from then on; every job still runs once, in order."""
    with jobs.purge_held_back("t", dead=30_000):
        log = tmp_path / "ran"
        worker = start_worker({"t": 1}, command=f"sh -c 'echo {{id}} >> {log}'")
        ids = []
        for _ in range(6):  # one claim each: three slow ones, then from the first row
            ids += jobs.insert("t")
            worker.request("poll")
            jobs.wait_done(ids[-1:], timeout=10)
    # The INFO line is the behaviour under test (docs/operations.md: it tells the
    # operator purge is behind); no reply shows a target's slow claims.
    assert "claims of t took" in worker.log()
    assert [int(line) for line in log.read_text().split()] == ids
    rows = jobs.rows("id >= %s", (ids[0],))
    assert [(r["result"], r["attempts"]) for r in rows] == [("ok", 1)] * len(ids)
