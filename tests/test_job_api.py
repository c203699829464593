"""The job API with real daemons: job events on the master's PUB socket, the Python
client (sync and async), and schedules fired by the master and by workers."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time

import msgpack
import pytest
import yaml
import zmq

from jobd.api import waiting
from jobd.client import AsyncJobd, Jobd, JobNotFound, RequestError, WaitTimeout, call

from conftest import Daemon, free_port, wait_for


def registered(master: Daemon, *names: str) -> None:
    wait_for(lambda: set(names) <= set(master.request("status")["workers"]), 5, "registered")


class Subscriber:
    """A raw pyzmq SUB socket, as the README tells anyone to write one."""

    def __init__(self, address: str, prefix: bytes = b"job/") -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sock.connect(address)
        assert monitor.poll(5000), "the events endpoint did not answer"
        self.sock.disable_monitor()
        monitor.close()
        time.sleep(0.05)  # the subscription travels to the PUB socket after the handshake

    def events(self, until: callable, timeout: float = 10.0) -> list[tuple[str, dict]]:
        """(topic, event) pairs until `until(event)` is true."""
        received = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                topic, payload = self.sock.recv_multipart()
                event = msgpack.unpackb(payload)
                received.append((topic.decode(), event))
                if until(event):
                    return received
        raise AssertionError(f"timed out; got {received}")

    def close(self) -> None:
        self.sock.close()


def test_job_events_are_published_for_started_and_finished(jobs, start_master, start_worker):
    master = start_master()
    targets = {"t": 1, "r": {"concurrency": 1, "max_attempts": 2, "retry_backoff": 0}}
    start_worker(targets, "sh -c 'sleep 0.2; echo out; exit 3'", master=master.address)
    registered(master, "w0")
    everything = Subscriber(master.events)
    (job_id,) = jobs.insert("t")
    one_job = Subscriber(master.events, f"job/{job_id + 1}/".encode())
    (retried,) = jobs.insert("r")
    master.request("poke", {"targets": ["t", "r"]})

    got = everything.events(lambda e: e["id"] == job_id and e["event"] == "finished")
    mine = [(topic, event) for topic, event in got if event["id"] == job_id]
    assert [topic for topic, _ in mine] == [f"job/{job_id}/started", f"job/{job_id}/finished"]
    started, finished = (event for _, event in mine)
    assert started["target"] == "t" and started["slot"] == "default"
    assert started["worker"] == "w0" and started["attempts"] == 1
    assert abs(started["time"] - time.time()) < 5
    assert (finished["result"], finished["code"], finished["signal"]) == ("fail", 3, None)
    # The job sleeps 0.2 s: its duration is its own run, within the time between the
    # two events (the clock starts just before the process is spawned, and the started
    # event goes once it is: 50 ms for that).
    assert 0.2 <= finished["duration"] <= finished["time"] - started["time"] + 0.05 < 5
    assert "stdout" not in finished  # the row has the output
    # The finished event is sent once the row is written: a reader sees the outcome.
    assert jobs.row(job_id)["status"] == "done"

    # A subscription to one job's prefix gets that job's events only, retries included.
    events = one_job.events(lambda e: e["event"] == "finished")
    assert [e["event"] for _, e in events] == ["started", "retry", "started", "finished"]
    assert {e["id"] for _, e in events} == {retried}
    assert events[1][1]["run_at"] >= int(events[0][1]["time"])
    everything.close()
    one_job.close()
    # t: started, finished; r: started, retry, started, finished.
    assert master.request("status")["events"] == {
        "address": master.events, "published": 6, "dropped": 0,
    }  # fmt: skip


def test_job_events_only_from_registered_workers(start_master):
    master = start_master()
    event = {"event": "started", "id": 1, "target": "t", "slot": "default", "worker": "x",
             "time": time.time(), "attempts": 1}  # fmt: skip
    with pytest.raises(RequestError) as refused:
        call(master.address, "job-events", {"events": [event]})
    assert refused.value.code == "not_found"
    with pytest.raises(RequestError) as malformed:
        call(master.address, "job-events", {"events": [{**event, "event": "exploded"}]})
    assert malformed.value.code == "bad_request"
    assert master.request("ping")["events"] == master.events


def test_client_api_end_to_end_sync(jobs, start_master, start_worker):
    master = start_master()
    targets = {"t": 2, "docs": {"concurrency": 1, "description": "documented target"}}
    start_worker(targets, "sh -c 'cat; echo job {id} >&2'", master=master.address)
    registered(master, "w0")
    with Jobd(jobs.db.url_string, table=jobs.table, master=master.address) as jobd:
        job_id = jobd.submit("t", data={"to": "ann", "n": [1, 2]}, priority=5)
        outcome = jobd.wait(job_id, timeout=10)
        assert (outcome["status"], outcome["result"], outcome["code"]) == ("done", "ok", 0)
        assert json.loads(outcome["stdout"]) == {"to": "ann", "n": [1, 2]}
        assert outcome["stderr"] == f"job {job_id}\n" and outcome["worker"] == "w0"
        assert jobd.result(job_id) == outcome
        assert jobd.job(job_id)["priority"] == 5

        manual = jobd.submit("t", manual=True)
        assert jobd.result(manual) is None
        reply = jobd.run_manual([manual, 999_999])  # the master routes by the row's target
        assert reply["jobs"][manual]["result"] == "ok"
        assert reply["errors"] == {999_999: "job 999999 not found"}

        delayed = jobd.submit("t", delay=1)
        assert jobd.wait(delayed, timeout=10)["result"] == "ok"
        row = jobd.job(delayed)
        assert row["time_started"] >= row["run_at"] >= row["time_created"] + 1

        listed = jobd.jobs(target="t", status="done")
        assert [r["id"] for r in listed] == [delayed, manual, job_id]
        assert jobd.targets()["docs"] == {
            "description": "documented target",
            "workers": {"w0": {"default": 1}},
        }
        with pytest.raises(WaitTimeout) as late:
            jobd.wait(jobd.submit("t", delay=60), timeout=0.3)
        assert late.value.done == {}
        with pytest.raises(JobNotFound):
            jobd.wait(999_999)
        with pytest.raises(ValueError, match="target"):
            jobd.submit("not a target!")


def test_client_api_async_waits_on_events_and_without(
    jobs, start_master, start_worker, monkeypatch
):
    # With the rows read only once a minute, a wait that ends in time came by events.
    monkeypatch.setattr(waiting, "EVENTS_RECHECK", 60.0)
    master = start_master()
    worker = start_worker({"t": 4}, "sh -c 'sleep 0.1'", master=master.address)
    registered(master, "w0")
    # (The fixtures talk to the daemons with asyncio.run: the scenario runs after them.)
    asyncio.run(async_scenario(jobs, master, worker))


async def async_scenario(jobs, master: Daemon, worker: Daemon) -> None:
    async with AsyncJobd(jobs.db.url_string, table=jobs.table, master=master.address) as jobd:
        assert await jobd.events_address() == master.events
        ids = [await jobd.submit("t") for _ in range(12)]
        seen: list[int] = []
        outcomes = await jobd.wait_many(ids, timeout=10, on_finished=lambda o: seen.append(o["id"]))
        assert sorted(seen) == sorted(ids)
        assert {o["result"] for o in outcomes.values()} == {"ok"}

    # Straight to a worker there are no events: the rows are read every second.
    async with AsyncJobd(jobs.db.url_string, table=jobs.table, worker=worker.address) as jobd:
        assert await jobd.events_address() is None
        job_id = await jobd.submit("t")
        assert (await jobd.wait(job_id, timeout=10))["result"] == "ok"
        assert (await jobd.poke(["t"])) == {"targets": ["t"]}


def test_interval_and_cron_schedules_fire_through_the_master(jobs, start_master, start_worker):
    master = start_master(database=jobs.db.url_string, table=jobs.table)
    # poll_interval 0: only the master's pokes make this worker claim anything.
    start_worker({"t": 2}, "sh -c 'echo {schedule}/{id}'", master=master.address)
    registered(master, "w0")
    with Jobd(jobs.db.url_string, table=jobs.table, master=master.address) as jobd:
        every = jobd.schedule("every-second", "t", interval=1, data={"k": 1})
        cron = jobd.schedule("even-seconds", "t", cron="* * * * * */2")  # 6th field: seconds
        wait_for(lambda: jobs.count("schedule_id = %s", (cron.id,)) >= 2, 8, "two cron runs")
        jobd.enable_schedule("every-second", False)
        jobd.enable_schedule("even-seconds", False)
    rows = jobs.wait_done()
    for schedule, step in ((every, 1), (cron, 2)):
        mine = [r for r in rows if r["schedule_id"] == schedule.id]
        fires = [r["scheduled_at"] for r in mine]
        assert len(fires) >= 2 and all(b - a == step for a, b in itertools.pairwise(fires))
        for r in mine:
            assert r["scheduled_at"] % step == 0
            assert r["stdout"] == f"{schedule.id}/{r['id']}\n"
            # Created on time, and started at once: the master poked the worker.
            assert 0 <= r["time_created"] - r["scheduled_at"] <= 1
            assert r["time_started"] - r["scheduled_at"] <= 1
    assert all(r["data"] == '{"k": 1}' for r in rows if r["schedule_id"] == every.id)


def test_master_and_worker_schedulers_create_each_run_once(jobs, start_master, start_worker):
    master = start_master(database=jobs.db.url_string, table=jobs.table)
    w0 = start_worker({"t": 4}, master=master.address, scheduler=True)
    w1 = start_worker({"t": 4}, scheduler=True)  # a third scheduler, without a master
    registered(master, "w0")
    # All three schedulers must run before the schedule exists, or fewer compete for its
    # fires. Only their log line says a scheduler has found its table: no reply does.
    for daemon, who in ((master, "jobd-master"), (w0, "worker w0"), (w1, "worker w1")):
        wait_for(lambda d=daemon, w=who: f"scheduler of {w} runs" in d.log(), 5, who)
    with Jobd(jobs.db.url_string, table=jobs.table, master=master.address) as jobd:
        schedule = jobd.schedule("shared", "t", interval=1)
        wait_for(lambda: jobs.count() >= 4, 8, "four runs")
        jobd.remove_schedule("shared")
    rows = jobs.wait_done()
    fires = [r["scheduled_at"] for r in rows]
    assert fires == sorted(set(fires))  # one job per fire time
    assert all(b - a == 1 for a, b in itertools.pairwise(fires))
    assert {r["schedule_id"] for r in rows} == {schedule.id}
    assert {r["result"] for r in rows} == {"ok"}


def test_catch_up_after_downtime_when_the_master_starts(jobs, start_master):
    with Jobd(jobs.db.url_string, table=jobs.table, master="tcp://127.0.0.1:1") as jobd:
        once = jobd.schedule("once", "t", interval=3600)
        skip = jobd.schedule("skip", "t", interval=3600, catch_up="skip")
    missed = int(time.time()) - 5 * 3600 - 600  # five missed fire times, and a bit
    jobs.execute(f"UPDATE `{jobs.table}_schedules` SET next_fire = %s", (missed,))
    start_master(database=jobs.db.url_string, table=jobs.table)
    # Both schedules moved on (each in the transaction that creates its fires): the
    # scheduler has decided on both, and "skip" created nothing.
    query = f"SELECT id, next_fire FROM `{jobs.table}_schedules` ORDER BY id"
    upcoming = [(once.id, missed + 6 * 3600), (skip.id, missed + 6 * 3600)]
    wait_for(lambda: jobs.execute(query) == upcoming, 5, "both schedules moved on")
    (row,) = jobs.rows()
    assert (row["schedule_id"], row["scheduled_at"]) == (once.id, missed + 5 * 3600)


def master_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobd_master", *args], capture_output=True, text=True, timeout=20
    )


def test_master_checks_its_database_and_events_config_and_reports_them(
    jobs, tmp_path, start_master
):
    path = tmp_path / "master.yaml"
    listen = f"tcp://127.0.0.1:{free_port()}"
    path.write_text(yaml.safe_dump({"listen": listen, "database": jobs.db.url_string,
                                    "table": jobs.table}))  # fmt: skip
    done = master_cli("--check", "--config", str(path))
    assert done.returncode == 0 and f"schedules of {jobs.table})" in done.stdout, done.stderr
    path.write_text(yaml.safe_dump({"listen": listen, "database": jobs.db.url_string,
                                    "table": "no_such_table"}))  # fmt: skip
    done = master_cli("--check", "--config", str(path))
    assert done.returncode == 2 and "table no_such_table_schedules does not exist" in done.stderr
    bad_configs = [
        ({"events": "7082"}, "events: expected a ZeroMQ endpoint or false"),
        ({"table": "x y"}, "table: expected a table name"),
        ({"database": "http://x"}, "database: scheme must be mysql://"),
    ]
    for bad, message in bad_configs:
        path.write_text(yaml.safe_dump({"listen": listen, **bad}))
        done = master_cli("--check", "--config", str(path))
        assert done.returncode == 2 and message in done.stderr, done.stderr

    # events: false publishes nothing; the status says where schedules and events are.
    quiet = start_master(events=False)
    assert quiet.request("ping")["events"] is None
    assert quiet.request("status")["schedules"] is None
    busy = start_master(wait=False, events=quiet.address)  # a bound address
    # It exits 2 before it answers anything: its last words on stderr are all it says.
    assert busy.process.wait(10) == 2 and "cannot publish events on" in busy.log()
    master = start_master(database=jobs.db.url_string, table=jobs.table)
    status = master.request("status")
    assert status["events"]["address"] == master.events
    assert status["schedules"].endswith(f"/{jobs.db.url.database} {jobs.table}_schedules")
