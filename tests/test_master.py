"""jobd-master with real worker processes: registration, liveness, pokes and routing."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

import jobd
from jobd.client import Client, Jobd, RequestError

from conftest import Daemon, claimed, wait_for, wait_idle

INTERVAL = 0.3


def workers_of(master: Daemon) -> dict[str, dict]:
    return master.request("status")["workers"]


def registered(master: Daemon, *names: str) -> bool:
    return set(names) <= set(workers_of(master))


def polls_sent(master: Daemon) -> dict[str, int]:
    """Polls the master has handed to each worker's connection so far."""
    return {name: w["polls_sent"] for name, w in workers_of(master).items()}


def test_workers_register_re_register_on_changes_and_unregister_when_stopping(
    start_master, start_worker
):
    # A ping interval long enough that a stopping worker's drop cannot be three missed
    # pings: those take more than two intervals.
    interval = 1.0
    began = time.monotonic()
    master = start_master(ping_interval=interval)
    w0 = start_worker({"a": 2}, master=master.address)
    w1 = start_worker({"b": {"low": 1, "high": 2}}, master=master.address)
    wait_for(lambda: registered(master, "w0", "w1"), 5, "both workers registered")

    status = master.request("status")
    assert status["name"] == "jobd-master" and status["version"] == jobd.__version__
    assert 0 < status["uptime"] <= time.monotonic() - began and status["rss"] > 1 << 20
    assert status["ping_interval"] == interval
    entry = status["workers"]["w1"]
    assert entry["address"] == w1.address
    assert entry["targets"] == {"b": {"low": 1, "high": 2}}
    assert entry["connection"].startswith("w1/")
    assert entry["connected_since"] <= entry["last_seen"] <= time.time()

    # Changing targets on the worker re-registers it over the same connection.
    w0.request("add-target", {"target": "c", "slots": 3})
    wait_for(lambda: "c" in workers_of(master)["w0"]["targets"], 5, "w0 registered with c")
    w0.request("set-target-concurrency", {"target": "a", "concurrency": 5})
    wait_for(lambda: workers_of(master)["w0"]["targets"]["a"] == {"default": 5}, 5, "a: 5")
    w0.request("remove-target", {"target": "c"})
    wait_for(lambda: "c" not in workers_of(master)["w0"]["targets"], 5, "c removed")
    assert workers_of(master)["w0"]["connected_since"] == status["workers"]["w0"]["connected_since"]

    # Pings keep `last_seen` fresh.
    seen = workers_of(master)["w1"]["last_seen"]
    wait_for(lambda: workers_of(master)["w1"]["last_seen"] > seen, 3, "a ping answered")

    # A stopping worker unregisters at once instead of waiting for missed pings: it is
    # gone from the registry as soon as it has exited, well within two intervals, and it
    # had missed no ping.
    assert workers_of(master)["w1"]["missed_pings"] == 0
    stopping = time.monotonic()
    assert w1.stop() == 0
    assert set(workers_of(master)) == {"w0"}
    assert time.monotonic() - stopping < 2 * interval


def test_duplicate_name_is_refused_and_both_sides_log_it(start_master, start_worker):
    master = start_master(ping_interval=INTERVAL)
    first = start_worker({"a": 1}, master=master.address, name="dup")
    wait_for(lambda: registered(master, "dup"), 5, "first dup registered")
    second = start_worker({"b": 1}, master=master.address, name="dup")

    # The log lines are the behaviour here: no reply tells either operator that a second
    # worker under the name was refused, so both sides must say it in their logs.
    wait_for(lambda: "refused registration of dup (conflict)" in second.log(), 5, "refusal")
    assert "ERROR" in second.log() and "already registered by a live worker" in second.log()
    assert "refusing the registration from dup/" in second.log()
    assert f"(listen {second.address})" in second.log()  # both workers log to dup.log
    master_log = master.log()
    assert "ERROR" in master_log and f"listen {first.address}" in master_log
    # The first keeps its registration; the second keeps serving direct requests.
    entry = workers_of(master)["dup"]
    assert entry["address"] == first.address and entry["targets"] == {"a": {"default": 1}}
    assert second.request("ping")["name"] == "dup"

    # Once the first is gone for good, the second takes the name on a later attempt.
    first.kill()
    wait_for(lambda: workers_of(master).get("dup", {}).get("address") == second.address, 10,
             "second takes over")  # fmt: skip


def test_poke_reaches_only_the_workers_serving_the_target(jobs, start_master, start_worker):
    master = start_master(ping_interval=INTERVAL)
    cmd = "sh -c 'echo ran'"
    w0 = start_worker({"a": 2}, cmd, master=master.address)
    w1 = start_worker({"b": 2}, cmd, master=master.address)
    w2 = start_worker({"a": 2, "b": 2}, cmd, master=master.address)
    wait_for(lambda: registered(master, "w0", "w1", "w2"), 5, "workers registered")
    wait_idle(w0, w1, w2)  # their start-up claims found the table empty
    assert polls_sent(master) == {"w0": 0, "w1": 0, "w2": 0}
    a_jobs = jobs.insert("a", 4)
    (b_job,) = jobs.insert("b")

    reply = master.request("poke", {"targets": ["a"]})
    assert reply == {"workers": ["w0", "w2"], "errors": {}, "remembered": []}
    rows = jobs.wait_done(a_jobs)
    assert {r["worker"] for r in rows} <= {"w0", "w2"}
    # One poll each to w0 and w2, none to w1; and the polls reached them: only a poll can
    # make these workers claim (no safety poll), and they claimed the four jobs of a.
    assert polls_sent(master) == {"w0": 1, "w1": 0, "w2": 1}
    assert claimed(w0)["by_target"] + claimed(w2)["by_target"] == 4
    # w2 serves b too, but the poll carried only a: the b job is still waiting, and w1
    # (whose every poll would carry b) claimed nothing.
    assert jobs.row(b_job)["status"] == "waiting"
    assert claimed(w1) == {"by_target": 0, "named": 0}

    reply = master.request("poke", {"targets": ["b", "nobody"]})
    assert reply == {"workers": ["w1", "w2"], "errors": {}, "remembered": ["nobody"]}
    (row,) = jobs.wait_done([b_job])
    assert row["worker"] in ("w1", "w2")
    assert polls_sent(master) == {"w0": 1, "w1": 1, "w2": 2}


def test_remembered_poke_is_delivered_on_registration(jobs, start_master, start_worker):
    master = start_master(ping_interval=INTERVAL)
    reply = master.request("poke", {"targets": ["late"]})
    assert reply == {"workers": [], "errors": {}, "remembered": ["late"]}
    assert master.request("status")["remembered"] == ["late"]

    start_worker({"late": 1, "other": 1}, master=master.address)
    # The poke is the only one: the worker's one poll is its delivery.
    wait_for(lambda: polls_sent(master) == {"w0": 1}, 5, "the remembered poke delivered")
    assert master.request("status")["remembered"] == []


def test_a_burst_of_pokes_is_coalesced(jobs, start_master, start_worker):
    master = start_master(ping_interval=1.0)
    worker = start_worker({"a": 1, "b": 1}, master=master.address)
    wait_for(lambda: registered(master, "w0"), 5, "registered")
    wait_idle(worker)
    assert polls_sent(master) == {"w0": 0}
    # One job of each target, which only a poll can bring to the worker (no safety poll).
    ids = jobs.insert("a") + jobs.insert("b")

    async def burst(count: int) -> float:
        async with Client(master.address, timeout=30) as client:
            started = time.monotonic()
            replies = await asyncio.gather(
                *(
                    client.request("poke", {"targets": ["a" if i % 2 else "b"]})
                    for i in range(count)
                )
            )
            elapsed = time.monotonic() - started
        assert all(r["workers"] == ["w0"] for r in replies)
        return elapsed

    elapsed = asyncio.run(burst(10_000))
    # The polls reached the worker: it claimed both jobs (by target: a poll gathering
    # pokes names no rows).
    jobs.wait_done(ids)
    assert claimed(worker) == {"by_target": 2, "named": 0}
    # A poll still in flight may send one more with what was poked meanwhile.
    polls = polls_sent(master)["w0"]
    print(f"10,000 pokes in {elapsed:.2f} s cost {polls} polls")
    assert 1 <= polls <= 30

    # No fixed delay: a lone poke is answered at once.
    started = time.monotonic()
    master.request("poke", {"targets": ["a"]})
    assert time.monotonic() - started < 0.2


def test_master_restart_workers_come_back_and_pokes_work(jobs, start_master, start_worker):
    interval = 0.5
    master = start_master(ping_interval=interval)
    w0 = start_worker({"a": 1}, "sh -c 'echo {id}'", master=master.address)
    w1 = start_worker({"b": 1}, "sh -c 'echo {id}'", master=master.address)
    wait_for(lambda: registered(master, "w0", "w1"), 5, "registered")

    master.kill()
    # While the master is away the workers run jobs and answer direct requests.
    (job,) = jobs.insert("a")
    w0.request("poll", {"targets": ["a"]})
    jobs.wait_done([job])
    # Until both workers have noticed the silence (three intervals) and try to register
    # again. Only their log says so: no reply of a worker shows its link to the master.
    for worker in (w0, w1):
        wait_for(lambda w=worker: "no word from master" in w.log(), 5, "the silence noticed")
    assert w1.request("ping")["name"] == "w1"

    master.start()  # same address; waits until it answers
    back = time.monotonic()
    wait_for(lambda: registered(master, "w0", "w1"), 5, "workers back")
    assert time.monotonic() - back < 2 * interval
    a_job, b_job = jobs.insert("a")[0], jobs.insert("b")[0]
    assert master.request("poke", {"targets": ["a", "b"]})["workers"] == ["w0", "w1"]
    assert [r["status"] for r in jobs.wait_done([a_job, b_job], 5)] == ["done", "done"]


def test_quick_master_restart_is_noticed_on_reconnection(start_master, start_worker):
    interval = 1.0
    master = start_master(ping_interval=interval)
    start_worker({"a": 1}, master=master.address)
    wait_for(lambda: registered(master, "w0"), 5, "registered")
    master.kill()
    master.start()
    back = time.monotonic()
    # Well before the worker could miss three pings: the reconnection triggers it.
    wait_for(lambda: registered(master, "w0"), 5, "w0 back")
    assert time.monotonic() - back < 2 * interval


def test_a_killed_worker_leaves_the_registry_after_three_intervals(start_master, start_worker):
    master = start_master(ping_interval=INTERVAL)
    start_worker({"a": 1}, master=master.address)
    w1 = start_worker({"a": 1}, master=master.address)
    wait_for(lambda: registered(master, "w0", "w1"), 5, "registered")

    w1.kill()
    killed = time.monotonic()
    # The registry counts w1's missed pings while it is still in it...
    misses = set()

    def dropped() -> bool:
        workers = workers_of(master)
        if "w1" in workers:
            misses.add(workers["w1"]["missed_pings"])
        return "w1" not in workers

    wait_for(dropped, 5, "w1 dropped")
    elapsed = time.monotonic() - killed
    # Three missed pings: the first may come right after the kill, the third two intervals on.
    assert 1.5 * INTERVAL <= elapsed <= 5 * INTERVAL, elapsed
    assert misses & {1, 2} and misses <= {0, 1, 2}, misses  # ...and drops it at the third
    assert set(workers_of(master)) == {"w0"}
    assert master.request("poke", {"targets": ["a"]})["workers"] == ["w0"]


def test_run_manual_is_routed_over_two_workers_and_aggregated(jobs, start_master, start_worker):
    master = start_master(ping_interval=INTERVAL)
    cmd = "sh -c 'echo {target}-{id}; exit $(({id} % 2))'"
    start_worker({"a": 2}, cmd, master=master.address)
    start_worker({"b": 2}, cmd, master=master.address)
    wait_for(lambda: registered(master, "w0", "w1"), 5, "registered")
    a_ids = jobs.insert("a", 2, status="manual")
    b_ids = jobs.insert("b", 2, status="manual")
    (waiting,) = jobs.insert("a")
    (orphan,) = jobs.insert("zzz", status="manual")

    request = [{"id": i, "target": "a"} for i in a_ids] + [{"id": i, "target": "b"} for i in b_ids]
    request += [{"id": waiting, "target": "a"}, {"id": orphan, "target": "zzz"}]
    reply = master.request("run-manual", {"jobs": request})

    assert set(reply["jobs"]) == set(a_ids + b_ids)
    for job_id in a_ids + b_ids:
        result = reply["jobs"][job_id]
        target = "a" if job_id in a_ids else "b"
        assert result["worker"] == ("w0" if target == "a" else "w1")
        assert result["stdout"] == f"{target}-{job_id}\n"
        assert result["result"] == ("ok" if job_id % 2 == 0 else "fail")
        assert jobs.row(job_id)["status"] == "done"
    assert set(reply["errors"]) == {waiting, orphan}
    assert "w0:" in reply["errors"][waiting] and "not manual" in reply["errors"][waiting]
    assert reply["errors"][orphan] == "no live worker serves target zzz"
    assert jobs.row(waiting)["status"] == "waiting"


def test_run_manual_ends_when_its_worker_leaves(jobs, start_master, start_worker):
    master = start_master(ping_interval=INTERVAL)
    worker = start_worker({"t": 1}, "sleep 30", master=master.address)
    wait_for(lambda: registered(master, "w0"), 5, "registered")
    (job,) = jobs.insert("t", status="manual")

    async def run() -> tuple[Any, float]:
        async with Client(master.address, timeout=20) as client, Client(worker.address) as w0:
            pending = asyncio.ensure_future(
                client.request("run-manual", {"jobs": [{"id": job, "target": "t"}]})
            )
            while not (await w0.request("status"))["running"]:
                await asyncio.sleep(0.05)
            worker.kill()
            killed = time.monotonic()
            return await pending, time.monotonic() - killed

    reply, waited = asyncio.run(run())
    assert reply["jobs"] == {}
    assert reply["errors"] == {job: "w0: no answer: worker w0 left the registry"}
    assert waited < 6 * INTERVAL


def test_send_signal_reaches_the_worker_running_the_job(jobs, start_master, start_worker):
    master = start_master(ping_interval=INTERVAL)
    workers = {w.address: w for w in (
        start_worker({"t": 1}, "sleep 30", master=master.address),
        start_worker({"t": 1}, "sleep 30", master=master.address),
    )}  # fmt: skip
    wait_for(lambda: registered(master, "w0", "w1"), 5, "registered")
    first, second = jobs.insert("t", 2)
    master.request("poke", {"targets": ["t"]})
    wait_for(lambda: jobs.count("status = 'running'") == 2, 10, "both jobs running")
    owner = {r["id"]: r["worker"] for r in jobs.rows()}
    assert set(owner.values()) == {"w0", "w1"}  # one each: concurrency 1
    # `running` in the row comes right before the spawn; the worker's status, right after.
    for worker in workers.values():
        wait_for(lambda w=worker: w.request("status")["running"], 5, "spawned")

    reply = master.request(
        "send-signal", {"jobs": [{"id": first, "signal": "TERM", "target": "t"}]}
    )
    assert reply == {"jobs": {first: {"signal": "SIGTERM", "worker": owner[first]}}, "errors": {}}
    (row,) = jobs.wait_done([first], 5)
    assert row["sig"] == "SIGTERM" and row["result"] == "fail"
    assert jobs.row(second)["status"] == "running"

    # A wrong target falls back to the other live workers; an idle id is an error.
    reply = master.request(
        "send-signal",
        {"jobs": [
            {"id": second, "signal": "SIGKILL", "target": "elsewhere"},
            {"id": first, "signal": "SIGKILL", "target": "t"},
        ]},
    )  # fmt: skip
    assert reply["jobs"] == {second: {"signal": "SIGKILL", "worker": owner[second]}}
    assert reply["errors"][first].startswith(f"job {first} is not running on any live worker")
    (row,) = jobs.wait_done([second], 5)
    assert row["sig"] == "SIGKILL"


def test_pause_and_continue_fan_out_and_status_gives_up_on_a_silent_worker(
    start_master, start_worker
):
    master = start_master(ping_interval=1.0)
    w0 = start_worker({"a": 1, "c": 1}, master=master.address)
    w1 = start_worker({"b": 1, "c": 1}, master=master.address)
    wait_for(lambda: registered(master, "w0", "w1"), 5, "registered")

    reply = master.request("pause", {"targets": ["a"]})
    assert set(reply["workers"]) == {"w0"} and reply["errors"] == {}
    assert w0.request("status")["targets"]["a"]["paused"] is True
    reply = master.request("pause")  # no targets: every target of every worker
    assert set(reply["workers"]) == {"w0", "w1"}
    assert all(t["paused"] for t in w1.request("status")["targets"].values())
    reply = master.request("continue", {"targets": ["c", "gone"]})
    assert set(reply["workers"]) == {"w0", "w1"} and reply["unserved"] == ["gone"]
    assert w1.request("status")["targets"]["c"]["paused"] is False
    with pytest.raises(RequestError, match="no live worker serves: gone") as caught:
        master.request("continue", {"targets": ["gone"]})
    assert caught.value.code == "not_found"

    status = master.request("status", {"poll_workers": True})
    assert status["workers"]["w0"]["status"]["name"] == "w0"
    assert status["workers"]["w1"]["status"]["targets"]["b"]["paused"] is True

    w1.signal(signal.SIGSTOP)  # a worker that does not answer in time
    try:
        started = time.monotonic()
        status = master.request("status", {"poll_workers": True})
        assert time.monotonic() - started < 3
        assert status["workers"]["w0"]["status"]["name"] == "w0"
        assert "no answer" in status["workers"]["w1"]["error"]
        assert "status" not in status["workers"]["w1"]
    finally:
        w1.signal(signal.SIGCONT)


def test_the_master_runs_without_openssl_and_its_scheduler_still_reaches_the_database(
    jobs, start_master, start_worker
):
    # jobd_master/cli.py keeps asyncio from mapping OpenSSL (about 5 MB of the master);
    # the scheduler's database client (pymysql) works without it.
    master = start_master(database=jobs.db.url_string, table=jobs.table)
    assert master.process is not None
    with open(f"/proc/{master.process.pid}/maps") as f:
        maps = f.read()
    assert "libssl" not in maps and "_ssl." not in maps
    start_worker({"t": 1}, master=master.address)
    wait_for(lambda: registered(master, "w0"), 5, "the worker registered")
    with Jobd(jobs.db.url_string, table=jobs.table, master=master.address) as jobd:
        tick = jobd.schedule("tick", "t", interval=1)
        wait_for(
            lambda: jobs.count("schedule_id = %s AND status = 'done'", (tick.id,)) >= 1,
            10, "a job of the master's schedule done",
        )  # fmt: skip
