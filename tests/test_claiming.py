"""Claiming and scheduling across slots and workers, checked by the launcher's own record."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import jobd

from conftest import claimed, wait_for, wait_idle

# Appends "start|end <worker> <slot> <id> <ns>" lines; small O_APPEND writes do not interleave.
RECORD = (
    "sh -c 'echo start $WORKER {slot} {id} $(date +%s%N) >> {log}; sleep {sleep}; "
    "echo end $WORKER {slot} {id} $(date +%s%N) >> {log}'"
)


def recorder(log: Path, sleep: float, worker: str = "w") -> dict:
    command = RECORD.replace("{log}", str(log)).replace("{sleep}", str(sleep))
    return {"command": command, "env": {"WORKER": worker}}


def read_record(log: Path) -> list[tuple[str, str, str, int, int]]:
    """[(kind, worker, slot, id, ns)] in time order."""
    events = []
    for line in log.read_text().splitlines():
        kind, worker, slot, job_id, ns = line.split()
        events.append((kind, worker, slot, int(job_id), int(ns)))
    return sorted(events, key=lambda e: (e[4], e[0] == "start"))


def max_overlap(events, key) -> dict:
    """Largest number of jobs running at once, per key(event)."""
    current: collections.Counter = collections.Counter()
    peak: collections.Counter = collections.Counter()
    for event in events:
        k = key(event)
        current[k] += 1 if event[0] == "start" else -1
        peak[k] = max(peak[k], current[k])
    return dict(peak)


def test_slot_concurrency_is_never_exceeded(jobs, start_worker, tmp_path):
    log = tmp_path / "record"
    worker = start_worker({"v": {"low": 2, "high": 3}}, launcher=recorder(log, 0.15))
    ids = jobs.insert("v", 8, slot="low") + jobs.insert("v", 12, slot="high")
    worker.request("poll")
    rows = jobs.wait_done(ids, timeout=30)
    assert {r["result"] for r in rows} == {"ok"}
    peak = max_overlap(read_record(log), key=lambda e: e[2])
    # Never above the limit, and the limit is actually used.
    assert peak == {"low": 2, "high": 3}


def test_three_workers_compete_for_3000_jobs_and_run_each_once(jobs, start_worker, tmp_path):
    log = tmp_path / "ran"
    command = f"sh -c 'echo {{id}} >> {log}'"
    workers = [start_worker({"t": 4}, command=command) for _ in range(3)]
    ids = jobs.insert("t", 3000)
    for worker in workers:
        worker.request("poll")
    rows = jobs.wait_done(ids, timeout=120)
    ran = [int(line) for line in log.read_text().split()]
    assert sorted(ran) == ids  # every job ran, none twice
    assert all(r["status"] == "done" and r["result"] == "ok" and r["attempts"] == 1 for r in rows)
    per_worker = collections.Counter(r["worker"] for r in rows)
    assert set(per_worker) == {"w0", "w1", "w2"}, per_worker


def test_two_workers_share_jobs_and_run_at_the_same_time(jobs, start_worker, tmp_path):
    log = tmp_path / "record"
    workers = [
        start_worker({"t": 2}, launcher=recorder(log, 0.2, worker=f"w{n}")) for n in range(2)
    ]
    ids = jobs.insert("t", 20)
    for worker in workers:
        worker.request("poll")
    rows = jobs.wait_done(ids, timeout=30)
    events = read_record(log)
    per_worker = collections.Counter(e[1] for e in events if e[0] == "start")
    # Neither worker hoards: each can only take what it can start.
    assert per_worker["w0"] >= 4 and per_worker["w1"] >= 4, per_worker
    assert sum(per_worker.values()) == 20
    assert max_overlap(events, key=lambda e: e[1]) == {"w0": 2, "w1": 2}
    assert max_overlap(events, key=lambda e: "all")["all"] > 2  # both at the same time
    assert {r["worker"] for r in rows} == {"w0", "w1"}


def test_a_worker_claims_no_more_than_it_can_start(jobs, start_worker):
    worker = start_worker({"t": 2}, command="sleep 0.3", fetch_limit=100)
    ids = jobs.insert("t", 6)
    worker.request("poll")
    peak = 0
    while jobs.count("status NOT IN ('done')") > 0:
        # Long jobs are never claimed ahead: nothing waits in the worker unstarted...
        assert jobs.count("status = 'accepted'") == 0
        # ...and it runs at most its concurrency (a row whose process has just ended
        # may show 'running' for the few milliseconds until its outcome is written).
        status = worker.request("status")
        running = status["targets"]["t"]["slots"]["default"]["running"]
        assert running <= 2 and status["targets"]["t"]["slots"]["default"]["queued"] == 0
        peak = max(peak, running)
        time.sleep(0.02)
    assert peak == 2
    assert len(jobs.wait_done(ids)) == 6
    assert jobs.count("status = 'waiting'") == 0


def test_one_poll_is_carried_out_as_capacity_frees(jobs, start_worker):
    worker = start_worker({"t": 1}, command="sleep 0.05")
    ids = jobs.insert("t", 5)
    worker.request("poll")  # only one poll: the rest is claimed as jobs finish
    assert all(r["result"] == "ok" for r in jobs.wait_done(ids, timeout=15))
    assert claimed(worker) == {"by_target": 5, "named": 0}  # no safety poll: poll_interval 0


def test_poll_while_full_is_remembered(jobs, start_worker):
    worker = start_worker({"t": 1}, command="sleep 0.3")
    (first,) = jobs.insert("t")
    worker.request("poll")
    wait_for(lambda: jobs.row(first)["status"] == "running", 5, "first job running")
    (second,) = jobs.insert("t")
    worker.request("poll")  # no room now; must be carried out when the first finishes
    rows = jobs.wait_done([first, second])
    assert [r["result"] for r in rows] == ["ok", "ok"]
    # One place: the second started only once the first had finished.
    assert rows[1]["time_started"] >= rows[0]["time_finished"] >= rows[0]["time_started"]
    assert claimed(worker)["by_target"] == 2


def test_a_poll_while_one_slot_is_full_is_kept_for_that_slot(jobs, start_worker):
    # The slot "low" is busy when the second poll comes, so that claim asks only for
    # "high": the rows of "low" must still be claimed once it has room, with no poll.
    worker = start_worker({"v": {"low": 1, "high": 2}}, command="sleep 0.5")
    (first,) = jobs.insert("v", slot="low")
    worker.request("poll")
    wait_for(lambda: len(worker.request("status")["running"]) == 1, 5, "first job running")
    (second,) = jobs.insert("v", slot="low")
    (other,) = jobs.insert("v", slot="high")
    worker.request("poll")
    rows = jobs.wait_done([first, second, other], timeout=10)
    assert [r["result"] for r in rows] == ["ok", "ok", "ok"]


def test_a_paused_target_claims_none_of_its_polled_rows_until_continued(jobs, start_worker):
    worker = start_worker({"t": 2, "u": 1}, command="/bin/true")
    wait_idle(worker)
    assert worker.request("pause", {"targets": ["t"]}) == {"targets": ["t"]}
    status = worker.request("status")
    assert status["targets"]["t"]["paused"] is True
    assert status["targets"]["u"]["paused"] is False
    paused_ids = jobs.insert("t", 3)
    (other,) = jobs.insert("u")
    worker.request("poll")  # both targets, rows of both waiting
    jobs.wait_done([other])  # the other target keeps running
    # The claims that took u's row and then found u dry had t's rows waiting and t
    # polled: they passed them over (one job claimed, u's), and the poll of t is kept
    # for when it continues.
    status = wait_for(
        lambda: (s := worker.request("status"))["wanted"] == ["t"] and s, what="u found dry"
    )
    assert status["claimed"] == {"by_target": 1, "named": 0}
    assert status["wanted"] == ["t"]
    assert status["targets"]["t"]["slots"]["default"]["queued"] == 0
    assert jobs.count("status = 'waiting'") == 3  # nothing of the paused target was taken
    assert worker.request("continue", {"targets": ["t"]}) == {"targets": ["t"]}
    assert all(r["result"] == "ok" for r in jobs.wait_done(paused_ids))
    assert worker.request("status")["targets"]["t"]["paused"] is False
    assert claimed(worker) == {"by_target": 4, "named": 0}  # continue needed no new poll


def test_pause_lets_running_jobs_finish_and_starts_nothing_in_the_freed_place(jobs, start_worker):
    # The first job runs long enough for the pause to land while it runs, even on a
    # machine that is slow for a moment; u's jobs are instant.
    command = "sh -c '[ {target} != t ] || sleep 1'"
    worker = start_worker({"t": 1, "u": 1}, command=command)
    first, second = jobs.insert("t", 2)
    worker.request("poll")
    wait_for(lambda: jobs.row(first)["status"] == "running", 5, "first job running")
    assert worker.request("pause", {"targets": ["t"]}) == {"targets": ["t"]}
    assert jobs.wait_done([first])[0]["result"] == "ok"
    # A claim after t's place was freed, with t polled again: it takes u's row only.
    (other,) = jobs.insert("u")
    worker.request("poll")
    jobs.wait_done([other])
    assert claimed(worker) == {"by_target": 2, "named": 0}  # first, then u's row
    assert jobs.row(second)["status"] == "waiting"
    assert "t" in worker.request("status")["wanted"]
    worker.request("continue")
    assert jobs.wait_done([second])[0]["result"] == "ok"


def test_a_slot_starts_its_jobs_by_priority_then_by_id(jobs, start_worker, tmp_path):
    log = tmp_path / "order"
    worker = start_worker({"t": 1}, command=f"sh -c 'echo {{id}} >> {log}'")
    worker.request("pause")
    low = jobs.insert("t", 2, priority=-1)
    normal = jobs.insert("t", 2)
    high = jobs.insert("t", 2, priority=5)
    worker.request("continue")
    jobs.wait_done(low + normal + high)
    assert [int(x) for x in log.read_text().split()] == high + normal + low


def test_targets_added_resized_and_removed_at_run_time(jobs, start_worker):
    worker = start_worker({"t": 1}, command="sleep 1")
    reply = worker.request("add-target", {"target": "new", "slots": {"a": 1, "b": 2}})
    assert reply == {"target": "new", "slots": {"a": 1, "b": 2}}
    assert worker.request("status")["targets"]["new"]["slots"]["b"]["concurrency"] == 2
    ids = jobs.insert("new", 2, slot="b")
    worker.request("poll", {"targets": ["new"]})
    assert all(r["result"] == "ok" for r in jobs.wait_done(ids))

    reply = worker.request(
        "set-target-concurrency", {"target": "t", "concurrency": 3, "slot": "extra"}
    )
    assert reply["slots"] == {"default": 1, "extra": 3}

    running, queued = jobs.insert("new", 2, slot="a")
    worker.request("poll", {"targets": ["new"]})
    wait_for(lambda: jobs.row(running)["status"] == "running", 5, "a running job")
    reply = worker.request("remove-target", {"target": "new"})
    # Slot a has one place and no job of it has finished: nothing was claimed ahead.
    assert reply == {"target": "new", "released": 0, "running": 1}
    assert jobs.wait_done([running])[0]["result"] == "ok"  # the running job finished
    assert "new" not in worker.request("status")["targets"]
    # Its place freed and the worker claimed again (t polled): the removed target's row
    # stays waiting, never taken.
    (later,) = jobs.insert("t")
    worker.request("poll")
    jobs.wait_done([later])
    wait_idle(worker)  # t found dry again after its job
    assert claimed(worker) == {"by_target": 4, "named": 0}  # 2 of b, 1 of a, t's
    row = jobs.row(queued)
    assert (row["status"], row["worker"], row["attempts"]) == ("waiting", None, 0)


def test_send_signal_reaches_the_job(jobs, start_worker):
    worker = start_worker({"t": 1}, command="sleep 30")
    (job_id,) = jobs.insert("t")
    worker.request("poll")
    wait_for(lambda: job_id in worker.request("status")["running"], 5, "job running")
    reply = worker.request("send-signal", {"jobs": {job_id: "TERM", 999999: "SIGKILL"}})
    assert reply["jobs"] == {job_id: "SIGTERM"}
    assert reply["errors"] == {999999: "job 999999 is not running on worker w0"}
    row = jobs.wait_done([job_id])[0]
    assert (row["result"], row["sig"]) == ("fail", "SIGTERM")


def test_status_reports_identity_uptime_memory_and_every_slot(jobs, start_worker):
    began = time.monotonic()
    worker = start_worker({"t": 3, "v": {"low": 1, "high": 2}})
    status = worker.request("status")
    assert status["name"] == "w0"
    assert status["version"] == jobd.__version__
    assert status["pid"] == worker.process.pid
    # Uptime is the worker's own clock since it started: within the time since the test
    # launched it, and it moves on.
    assert 0 < status["uptime"] <= time.monotonic() - began
    time.sleep(0.05)
    later = worker.request("status")["uptime"]
    assert status["uptime"] + 0.049 <= later <= time.monotonic() - began
    assert 5_000_000 < status["rss"] < 500_000_000
    assert status["targets"] == {
        "t": {
            "paused": False,
            "description": "",
            "slots": {"default": {"concurrency": 3, "queued": 0, "running": 0}},
        },
        "v": {
            "paused": False,
            "description": "",
            "slots": {
                "low": {"concurrency": 1, "queued": 0, "running": 0},
                "high": {"concurrency": 2, "queued": 0, "running": 0},
            },
        },
    }


# --- polls that name their jobs (JobStore.claim_named) ------------------------------


def test_a_poll_naming_its_job_claims_it_by_id(jobs, start_worker):
    worker = start_worker({"t": 1}, command="sh -c 'echo {id}'")
    wait_idle(worker)
    (job_id,) = jobs.insert("t")
    worker.request("poll", {"targets": ["t"], "ids": [job_id]})
    (row,) = jobs.wait_done([job_id])
    assert (row["status"], row["result"], row["attempts"]) == ("done", "ok", 1)
    assert (row["worker"], row["stdout"]) == ("w0", f"{job_id}\n")
    assert row["time_claimed"] > 0 and row["time_started"] > 0
    assert claimed(worker) == {"by_target": 0, "named": 1}


def test_named_rows_not_to_be_taken_by_id_are_claimed_as_usual(jobs, start_worker):
    worker = start_worker({"t": 1, "u": 1})
    wait_idle(worker)
    # Another target's row named in a poll of t: not taken (u was not polled).
    (other,) = jobs.insert("u")
    (mine,) = jobs.insert("t")
    worker.request("poll", {"targets": ["t"], "ids": [other]})
    jobs.wait_done([mine])  # the usual claim of t took it
    assert jobs.row(other)["status"] == "waiting"
    assert claimed(worker) == {"by_target": 1, "named": 0}
    # A delayed row: not before its time, and then by the worker's timer for it.
    wait_idle(worker)
    (delayed,) = jobs.insert("t", run_at=int(time.time()) + 2)
    worker.request("poll", {"targets": ["t"], "ids": [delayed]})
    (row,) = jobs.wait_done([delayed], timeout=10)
    assert row["time_started"] >= row["run_at"] and row["result"] == "ok"
    # An id that is no row at all changes nothing.
    worker.request("poll", {"targets": ["t"], "ids": [4_000_000_000]})
    worker.request("poll", {"targets": ["u"]})
    jobs.wait_done([other])
    assert claimed(worker) == {"by_target": 3, "named": 0}


def test_a_named_poll_does_not_pass_rows_waiting_for_a_free_place(jobs, start_worker, tmp_path):
    log = tmp_path / "record"
    worker = start_worker({"t": 1}, launcher=recorder(log, 0.4))
    wait_idle(worker)
    (first,) = jobs.insert("t")
    worker.request("poll", {"targets": ["t"]})
    wait_for(lambda: jobs.row(first)["status"] == "running")
    (low,) = jobs.insert("t")  # waits for the slot's one place
    worker.request("poll", {"targets": ["t"]})
    (high,) = jobs.insert("t", priority=5)
    worker.request("poll", {"targets": ["t"], "ids": [high]})
    jobs.wait_done([first, low, high], timeout=20)
    starts = [job_id for kind, _, _, job_id, _ in read_record(log) if kind == "start"]
    assert starts == [first, high, low]  # by priority, as ever with a backlog
    assert claimed(worker)["named"] == 0


def test_workers_poked_with_the_same_job_by_id_run_it_once(
    jobs, start_master, start_worker, tmp_path
):
    log = tmp_path / "ran"
    master = start_master()
    command = f"sh -c 'echo {{id}} >> {log}'"
    workers = [start_worker({"t": 2}, command=command, master=master.address) for _ in range(2)]
    wait_for(lambda: len(master.request("status")["workers"]) == 2, what="both registered")
    ids = []
    for _ in range(15):
        wait_idle(*workers)
        (job_id,) = jobs.insert("t")
        reply = master.request("poke", {"targets": ["t"], "ids": [job_id]})
        assert sorted(reply["workers"]) == ["w0", "w1"]
        jobs.wait_done([job_id])
        ids.append(job_id)
    assert sorted(int(line) for line in log.read_text().split()) == ids  # once each
    counts = [claimed(w) for w in workers]
    # Both raced for each row by id (the master relayed the ids), one took it.
    assert sum(c["named"] for c in counts) == 15
    assert sum(c["by_target"] for c in counts) == 0
    assert all(r["attempts"] == 1 and r["result"] == "ok" for r in jobs.rows())
