"""jobctl's commands on the jobs table: add (--wait), wait, jobs, show, stats, targets,
purge and schedule, against the real database and, where they poke or wait, real
daemons."""

from __future__ import annotations

import json
import math
import os
import pty
import re
import select
import subprocess
import sys
import time
from typing import Any

import pytest
from test_jobctl import jobctl, jobctl_json, table_rows

from jobctl.times import parse_duration, parse_since, parse_time
from jobd.store import search
from jobd.store.catalog import PURGE_BATCH, CatalogQueries

from conftest import Daemon, free_port, wait_for

#: A master address where nothing listens: commands that need no daemon never notice.
NOBODY = f"tcp://127.0.0.1:{free_port()}"


def db(jobs, master: str = NOBODY) -> list[str]:
    """The global options of a table command; no daemon: a poke gives up after 0.3 s."""
    timeout = ["--timeout", "0.3"] if master == NOBODY else []
    return ["--master", master, *timeout, "--database", jobs.db.url_string, "--table", jobs.table]


@pytest.fixture
def cluster(jobs, start_master, start_worker) -> Daemon:
    master = start_master()
    targets = {
        "ok": {"concurrency": 2, "description": "says hello",
               "launcher": {"command": "sh -c 'cat; echo; echo to stderr >&2'"}},
        "fail": {"concurrency": 2, "launcher": {"command": "sh -c 'echo failing; exit 3'"}},
        "killed": {"concurrency": 1, "launcher": {"command": "sh -c 'kill -9 $$'"}},
        "absent": {"concurrency": 1, "launcher": {"command": "/nonexistent/program"}},
        "many": 8,
    }  # fmt: skip
    start_worker(targets, "/bin/true", master=master.address)
    wait_for(lambda: "w0" in master.request("status")["workers"], 5, "w0 registered")
    return master


def test_add_prints_the_id_and_stores_the_options(jobs):
    options = ["--slot", "s1", "--priority", "7", "--in", "90s", "--data", '{"to": "ann"}']
    out = jobctl(*db(jobs), "add", "ok", *options, "--callback-url", "http://127.0.0.1:9/x")
    row = jobs.row(int(out.stdout))
    assert (row["target"], row["slot"], row["priority"]) == ("ok", "s1", 7)
    assert row["status"] == "waiting"
    assert json.loads(row["data"]) == {"to": "ann"}
    assert row["callback_url"] == "http://127.0.0.1:9/x"
    assert row["run_at"] - time.time() == pytest.approx(90, abs=2)
    at = int(time.time()) + 3600
    manual = jobctl_json(*db(jobs), "add", "ok", "--manual", "--at", str(at))["id"]
    assert (jobs.row(manual)["status"], jobs.row(manual)["run_at"]) == ("manual", at)
    # Usage errors: exit 2, nothing inserted.
    jobctl(*db(jobs), "add", "ok", "--data", "{not json", status=2)
    jobctl(*db(jobs), "add", "ok", "--at", str(at), "--in", "1m", status=2)
    jobctl(*db(jobs), "add", "not a target!", status=2)
    jobctl("--master", NOBODY, "--database", "mysql://nobody@127.0.0.1:1/x", "add", "ok", status=1)
    assert jobs.count() == 2


def test_add_wait_prints_the_outcome_and_exits_like_the_job(jobs, cluster):
    base = db(jobs, cluster.address)
    result = jobctl(*base, "add", "ok", "--data", '{"n": 1}', "--wait")
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "done" and outcome["result"] == "ok" and outcome["code"] == 0
    assert json.loads(outcome["stdout"]) == {"n": 1} and outcome["stderr"] == "to stderr\n"
    assert outcome["signal"] is None
    row = jobs.row(outcome["id"])
    assert row["status"] == "done"
    # Milliseconds, as the worker measured them and the row keeps them.
    assert outcome["duration"] == row["duration_ms"] / 1000
    assert 0 < outcome["duration"] < 1
    assert outcome["waited"] == row["time_claimed"] - row["time_created"]
    assert outcome["waited"] in (0, 1)

    failed = json.loads(jobctl(*base, "add", "fail", "--wait", status=3).stdout)
    assert (failed["result"], failed["code"], failed["stdout"]) == ("fail", 3, "failing\n")
    killed = json.loads(jobctl(*base, "add", "killed", "--wait", status=128 + 9).stdout)
    assert (killed["code"], killed["signal"]) == (None, "SIGKILL")
    absent = json.loads(jobctl(*base, "add", "absent", "--wait", status=127).stdout)
    assert "cannot start" in absent["stderr"]
    late = jobctl(*base, "add", "ok", "--in", "60", "--wait", "--wait-timeout", "0.3", status=124)
    assert json.loads(late.stdout)["status"] == "unfinished"

    # run-manual through the master: with a database, the rows tell the targets.
    manual = jobctl_json(*base, "add", "fail", "--manual")["id"]
    reply = jobctl_json(*base, "run-manual", manual)  # a failed job is no error of jobctl
    assert reply["jobs"][str(manual)]["code"] == 3 and reply["errors"] == {}
    assert "needs --target TARGET" in jobctl("--master", cluster.address, "run-manual", 1,
                                             status=2).stderr  # fmt: skip

    # targets: from the master's registry, with the worker's descriptions
    rows = table_rows(jobctl("--master", cluster.address, "targets").stdout)
    assert rows[0] == ["TARGET", "DESCRIPTION", "WORKERS"]
    assert ["ok", "says hello", "w0:2"] in rows
    assert jobctl_json("--master", cluster.address, "targets")["many"]["workers"] == {
        "w0": {"default": 8}
    }


def test_wait_prints_each_of_100_outcomes_and_exits_1_if_one_failed(jobs, cluster):
    ids = jobs.insert("many", 100)
    (failing,) = jobs.insert("fail")
    base = db(jobs, cluster.address)
    # Waiting from another process, started before the jobs run: their finished events
    # come in while it waits.
    waiter = subprocess.Popen(
        [sys.executable, "-m", "jobctl", *base, "wait", *map(str, ids)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    jobctl("--master", cluster.address, "poke", "many", "fail")
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 100 and all(": ok (code 0," in line for line in lines)
    assert sorted(int(line.split()[1].rstrip(":")) for line in lines) == ids

    # One failed job: exit status 1; --json has every outcome.
    mixed = jobctl_json(*base, "wait", ids[0], failing, status=1)
    assert mixed["jobs"][str(failing)]["code"] == 3 and mixed["unfinished"] == []
    jobctl(*base, "wait", 999_999, status=1)


def test_wait_shows_a_progress_bar_on_a_terminal(jobs, cluster):
    ids = jobs.insert("many", 5)
    cluster.request("poke", {"targets": ["many"]})
    controller, terminal = pty.openpty()
    waiter = subprocess.Popen(
        [sys.executable, "-m", "jobctl", *db(jobs, cluster.address), "wait", *map(str, ids)],
        stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(terminal)
    output = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 20)
        try:
            chunk = os.read(controller, 4096) if ready else b""
        except OSError:  # the terminal closed: jobctl exited
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert waiter.wait(10) == 0
    text = output.decode()
    assert "5 jobs" in text and "100%" in text  # click's bar at its end
    assert "5 jobs finished: 5 ok, 0 not ok" in text


def test_jobs_lists_newest_first_by_filter_and_show_prints_every_column(jobs):
    now = int(time.time())
    first, second = jobs.insert("a", 2, status="done", result="ok", return_code=0,
                                time_started=now - 5, time_finished=now - 2, stdout="hello\n",
                                data='{"x": 1}')  # fmt: skip
    (waiting,) = jobs.insert("b")
    rows = table_rows(jobctl(*db(jobs), "jobs").stdout)
    assert rows[0][:4] == ["ID", "TARGET", "SLOT", "STATUS"]
    assert [int(r[0]) for r in rows[1:]] == [waiting, second, first]  # newest first
    listed = jobctl_json(*db(jobs), "jobs", "--status", "done", "--target", "a", "--limit", "1")
    assert [r["id"] for r in listed] == [second] and "stdout" not in listed[0]
    assert jobctl_json(*db(jobs), "jobs", "--since", "1h", "--target", "b")[0]["id"] == waiting
    assert jobctl_json(*db(jobs), "jobs", "--since", str(now + 3600)) == []

    out = jobctl(*db(jobs), "show", first).stdout
    assert re.search(r"^target: +a$", out, re.M) and re.search(r"^status: +done$", out, re.M)
    assert re.search(r"duration: +3 s", out)
    assert "stdout:\n    hello" in out and '"x": 1' in out
    shown = jobctl_json(*db(jobs), "show", first)
    assert shown["stdout"] == "hello\n" and shown["worker"] is None
    jobctl(*db(jobs), "show", 999_999, status=1)


def test_jobs_text_and_before_page_on_below_a_search_window(jobs, monkeypatch):
    monkeypatch.setattr(search, "SEARCH_WINDOW", 10)
    ids = jobs.insert("a", 30)
    needles = [ids[-2], ids[5], ids[4]]  # one in the newest 10 ids, two far below
    jobs.execute(f"UPDATE `{jobs.table}` SET stdout = 'a needle' WHERE id IN (%s, %s, %s)", needles)
    first = jobctl(*db(jobs), "--json", "jobs", "--text", "needle")
    assert [r["id"] for r in json.loads(first.stdout)] == [ids[-2]]
    floor = ids[-1] + 1 - 10
    assert f"searched down to id {floor}: --before {floor} searches older jobs" in first.stderr
    # On below the window, a window at a time, until the matches are found.
    found, before = [], floor
    for _ in range(3):
        page = jobctl(*db(jobs), "--json", "jobs", "--text", "needle", "--before", before)
        found += [r["id"] for r in json.loads(page.stdout)]
        before = before - 10
    assert found == needles[1:]
    # A full page needs no window's note, a status and a target need no window at all.
    listed = jobctl(*db(jobs), "--json", "jobs", "--target", "a", "--limit", "20")
    assert len(json.loads(listed.stdout)) == 20 and "searched" not in listed.stderr


def nearest_rank(values: list[int], fraction: float) -> float | None:
    if not values:
        return None
    return float(sorted(values)[max(1, math.ceil(fraction * len(values))) - 1])


def test_stats_match_the_rows(jobs):
    now = int(time.time())

    def finished(target: str, seconds: int, result: str = "ok", ago: int = 60, **kw: Any):
        jobs.insert(target, status="done", result=result, time_started=now - ago - seconds,
                    time_finished=now - ago, **kw)  # fmt: skip

    # Rows from before duration_ms: whole seconds, and no claim time (no wait known).
    for seconds in (1, 2, 2, 3, 10, 4, 4):
        finished("a", seconds)
    finished("a", 7, "fail", return_code=2, attempts=3)
    finished("a", 0, "fail", attempts=2)
    jobs.insert("a", status="ignored", time_finished=now - 30)
    jobs.insert("a", 3)  # waiting: not counted
    finished("b", 5)
    finished("b", 100, ago=7200)  # outside --since 1h
    # Rows the worker measured: milliseconds, and claimed some seconds after created.
    for ms, wait in ((4, 0), (12, 1), (250, 1), (1500, 3)):
        finished("c", 1, duration_ms=ms, time_created=now - 100 - wait, time_claimed=now - 100)

    def seconds_of(row: dict[str, Any]) -> float:
        if row["duration_ms"] is not None:
            return row["duration_ms"] / 1000
        return float(row["time_finished"] - row["time_started"])

    rows = jobs.rows("status IN ('done', 'ignored')")
    expected = {}
    for target in ("a", "b", "c"):
        mine = [r for r in rows if r["target"] == target]
        done = [r for r in mine if r["status"] == "done"]
        durations = [seconds_of(r) for r in done]
        waits = [r["time_claimed"] - r["time_created"] for r in done if r["time_claimed"]]
        expected[target] = {
            "target": target,
            "runs": len(done),
            "ok": sum(r["result"] == "ok" for r in done),
            "failed": sum(r["result"] == "fail" for r in done),
            "ignored": sum(r["status"] == "ignored" for r in mine),
            "retried": sum(r["attempts"] > 1 for r in done),
            "mean": round(sum(durations) / len(durations), 3),
            "p50": nearest_rank(durations, 0.5),
            "p95": nearest_rank(durations, 0.95),
            "wait_mean": sum(waits) / len(waits) if waits else None,
            "wait_p95": float(nearest_rank(waits, 0.95)) if waits else None,
        }
    got = {s["target"]: s for s in jobctl_json(*db(jobs), "stats")}
    assert got == expected
    assert got["a"]["runs"] == 9 and got["a"]["retried"] == 2 and got["a"]["p95"] == 10.0
    assert (got["c"]["p50"], got["c"]["p95"], got["c"]["mean"]) == (0.012, 1.5, 0.442)
    assert (got["c"]["wait_mean"], got["c"]["wait_p95"]) == (1.25, 3.0)

    recent = {s["target"]: s for s in jobctl_json(*db(jobs), "stats", "--since", "1h")}
    assert recent["b"]["runs"] == 1 and recent["b"]["p50"] == 5.0
    assert [s["target"] for s in jobctl_json(*db(jobs), "stats", "--target", "b")] == ["b"]
    rows = [re.split(r"\s{2,}", line) for line in jobctl(*db(jobs), "stats").stdout.splitlines()]
    assert rows[0] == ["TARGET", "RUNS", "OK", "FAILED", "IGNORED", "RETRIED", "MEAN", "P50",
                       "P95", "WAITED", "WAITED P95"]  # fmt: skip
    assert rows[1] == ["a", "9", "7", "2", "1", "2", "3.667 s", "3 s", "10 s", "-", "-"]
    assert rows[3] == ["c", "4", "4", "0", "0", "0", "0.442 s", "0.012 s", "1.5 s", "1.2 s",
                       "3 s"]  # fmt: skip


def test_purge_deletes_only_what_it_should(jobs):
    now = int(time.time())
    old = now - 40 * 86400
    old_done = jobs.insert("t", 2500, status="done", result="ok", time_finished=old)
    recent = jobs.insert("t", 5, status="done", result="ok", time_finished=now - 86400)
    old_ignored = jobs.insert("t", 3, status="ignored", time_finished=old)
    unfinished = jobs.insert("t", 2)  # waiting
    unfinished += jobs.insert("t", status="running", time_started=old)
    total = jobs.count()

    dry = jobctl_json(*db(jobs), "purge", "--older-than", "30d", "--dry-run")
    assert dry == {"deleted": 0, "matching": 2503, "dry_run": True}
    assert jobs.count() == total
    out = jobctl(*db(jobs), "purge", "--older-than", "30d", "--status", "done").stdout
    assert out.strip() == "deleted 2500 rows finished more than 30d ago"
    assert jobs.count("id IN %s", (old_done,)) == 0
    jobctl(*db(jobs), "purge", "--older-than", "30d")
    left = [r["id"] for r in jobs.rows()]
    assert left == sorted(recent + unfinished)
    assert old_ignored[0] not in left
    jobctl(*db(jobs), "purge", "--older-than", "30d", "--status", "waiting", status=2)
    jobctl(*db(jobs), "purge", "--older-than", "soon", status=2)


def test_schedule_commands_add_list_disable_run_now_and_remove(jobs):
    base = db(jobs)
    options = ["--timezone", "Europe/Paris", "--data", '{"k": 1}', "--priority", "3"]
    added = jobctl_json(*base, "schedule", "add", "nightly", "report", "--cron", "30 2 * * *",
                        *options)  # fmt: skip
    assert (added["cron"], added["timezone"]) == ("30 2 * * *", "Europe/Paris")
    assert added["priority"] == 3
    assert added["next_fire"] > time.time() and added["enabled"] is True
    jobctl(*base, "schedule", "add", "tick", "t", "--every", "15m", "--catch-up", "skip")
    jobctl(*base, "schedule", "add", "tick", "t", "--every", "1m", status=1)  # name in use
    jobctl(*base, "schedule", "add", "bad", "t", "--cron", "every day", status=2)
    jobctl(*base, "schedule", "add", "bad", "t", status=2)  # neither --cron nor --every

    rows = table_rows(jobctl(*base, "schedule", "list").stdout)
    assert [r[:3] for r in rows] == [["NAME", "TARGET", "RULE"],
                                     ["nightly", "report", "cron 30 2 * * *"],
                                     ["tick", "t", "every 900 s"]]  # fmt: skip
    disabled = jobctl_json(*base, "schedule", "disable", "tick")
    assert disabled["enabled"] is False
    assert jobctl_json(*base, "schedule", "enable", "tick")["enabled"] is True
    shown = jobctl(*base, "schedule", "show", "nightly").stdout
    assert re.search(r"^rule: +cron 30 2 \* \* \*$", shown, re.M), shown

    # run-now: a job now (the poke finds no master here: a warning, not an error).
    job_id = int(jobctl(*base, "schedule", "run-now", "nightly").stdout)
    row = jobs.row(job_id)
    assert (row["target"], row["schedule_id"], row["priority"]) == ("report", added["id"], 3)
    assert json.loads(row["data"]) == {"k": 1}
    assert jobctl_json(*base, "schedule", "show", "nightly")["last_fire"] is None

    jobctl(*base, "schedule", "remove", "tick")
    assert [s["name"] for s in jobctl_json(*base, "schedule", "list")] == ["nightly"]
    for command in ("show", "remove", "enable", "run-now"):
        jobctl(*base, "schedule", command, "tick", status=1)


def test_time_and_duration_options_parse_and_refuse_garbage():
    assert parse_duration("1h30m", "--in") == 5400 and parse_duration("2w", "--in") == 1209600
    assert parse_duration("45", "--in", bare_seconds=True) == 45
    assert parse_time("1795000000", "--at") == 1795000000
    assert parse_time("2026-11-22T07:30:00+00:00", "--at") == 1795332600
    assert parse_since("1h", "--since") == pytest.approx(time.time() - 3600, abs=2)
    for bad in ("", "1x", "h"):
        with pytest.raises(Exception, match="duration"):
            parse_duration(bad, "--in")


def test_a_purge_batch_reads_only_the_rows_it_deletes(jobs):
    # Enough finished rows, most of them old enough, that a plan other than the finished
    # key in order would sort them all for every batch.
    jobs.insert("t", 20_000, status="done", result="ok")
    jobs.execute(f"UPDATE `{jobs.table}` SET time_finished = id")
    jobs.execute(f"ANALYZE TABLE `{jobs.table}`")
    sql = CatalogQueries.purge_batch.format(t=f"`{jobs.table}`")
    with jobs.conn.cursor() as cur:
        cur.execute("EXPLAIN " + sql, ("done", 15_000, PURGE_BATCH))
        columns = [c[0] for c in cur.description]
        (plan,) = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    assert plan["key"] == "finished_idx", plan
    assert "filesort" not in (plan["Extra"] or ""), plan
    assert jobs.count() == 20_000  # EXPLAIN deleted nothing
