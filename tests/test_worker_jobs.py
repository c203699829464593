"""Running jobs: what a real jobd process writes back to real rows."""

from __future__ import annotations

import os

from conftest import claimed, wait_for, wait_idle


def run_one(jobs, start_worker, command: str, **config) -> dict:
    worker = start_worker({"t": 1}, command=command, **config)
    (job_id,) = jobs.insert("t")
    worker.request("poll", {"targets": ["t"]})
    (row,) = jobs.wait_done([job_id])
    return row


def test_seed_insert_runs_to_done_ok_with_stdout(jobs, start_worker):
    worker = start_worker({"t": 2}, command="sh -c 'echo out-{id} {target} {slot}; echo err >&2'")
    # The seed's own INSERT form, unchanged.
    jobs.execute(
        f"INSERT INTO `{jobs.table}` (target, time_created) VALUES ('t', UNIX_TIMESTAMP())"
    )
    (job_id,) = [r["id"] for r in jobs.rows()]
    worker.request("poll", {"targets": ["t"]})
    (row,) = jobs.wait_done([job_id])
    assert row["status"] == "done"
    assert row["result"] == "ok"
    assert row["return_code"] == 0
    assert row["sig"] is None
    assert row["stdout"] == f"out-{job_id} t default\n"
    assert row["stderr"] == "err\n"
    assert row["worker"] == "w0"
    assert row["attempts"] == 1
    assert row["time_started"] >= row["time_created"]
    assert row["time_finished"] >= row["time_started"] > 0


def test_failing_command_records_fail_and_code(jobs, start_worker):
    row = run_one(jobs, start_worker, "sh -c 'echo bad >&2; exit 3'")
    assert (row["status"], row["result"], row["return_code"], row["sig"]) == (
        "done",
        "fail",
        3,
        None,
    )
    assert row["stderr"] == "bad\n"


def test_killed_job_records_signal_name(jobs, start_worker):
    row = run_one(jobs, start_worker, "sh -c 'kill -KILL $$'")
    assert (row["result"], row["return_code"], row["sig"]) == ("fail", None, "SIGKILL")


def test_output_beyond_buffer_is_cut_with_marker(jobs, start_worker):
    row = run_one(
        jobs, start_worker, "sh -c 'head -c 5000 /dev/zero | tr \"\\0\" x'", max_output_buffer=1000
    )
    assert row["result"] == "ok"
    assert row["stdout"].startswith("x" * 1000)
    assert row["stdout"][1000:] == "\n[jobd: output truncated, 4000 more bytes dropped]\n"


def test_binary_output_survives(jobs, start_worker):
    row = run_one(jobs, start_worker, "printf 'a\\377\\376b\\000c\\360\\237\\230\\200'")
    assert row["status"] == "done" and row["result"] == "ok"
    # Invalid UTF-8 becomes U+FFFD, valid multi-byte characters (an emoji) are kept.
    assert row["stdout"] == "a\ufffd\ufffdb\x00c\U0001f600"


def test_launcher_that_cannot_start_fails_and_worker_carries_on(jobs, start_worker):
    worker = start_worker({"t": 1}, command="/nonexistent/launcher {id}")
    (job_id,) = jobs.insert("t")
    worker.request("poll")
    (row,) = jobs.wait_done([job_id])
    assert (row["status"], row["result"], row["return_code"]) == ("done", "fail", None)
    assert "No such file or directory" in row["stderr"]
    assert worker.request("ping")["name"] == "w0"


def test_launcher_without_permission_fails(jobs, start_worker, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    row = run_one(jobs, start_worker, str(script))
    assert row["result"] == "fail"
    assert "Permission denied" in row["stderr"]


def test_environment_cwd_and_placeholders(jobs, start_worker, tmp_path):
    # Placeholders are substituted after splitting: a value can never add arguments.
    command = (
        "sh -c 'echo $JOBD_ID:$JOBD_TARGET:$JOBD_SLOT:$GREETING:$(pwd):$JOBD_DATABASE_URL' {id}"
    )
    row = run_one(
        jobs,
        start_worker,
        command,
        launcher={"command": command, "cwd": str(tmp_path), "env": {"GREETING": "hi"}},
    )
    assert row["stdout"] == f"{row['id']}:t:default:hi:{tmp_path}:\n"


def test_no_stray_process_is_left_behind(jobs, start_worker, tmp_path):
    marker = tmp_path / "stray.pid"
    # The job leaves a background sleep in its process group and exits at once.
    row = run_one(jobs, start_worker, f"sh -c 'sleep 300 & echo $! > {marker}; exit 0'")
    assert row["result"] == "ok"
    pid = int(marker.read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z" and False  # a zombie is not gone
        except FileNotFoundError:
            return True

    wait_for(gone, 5, "the background process to be killed and reaped")


def test_unknown_slot_is_ignored_with_reason(jobs, start_worker):
    worker = start_worker({"v": {"low": 1}}, command="/bin/true")
    (known,) = jobs.insert("v", slot="low")
    (unknown,) = jobs.insert("v", slot="high")
    (null_slot,) = jobs.insert("v")  # NULL means "default", which this worker lacks
    worker.request("poll")
    rows = {r["id"]: r for r in jobs.wait_done([known, unknown, null_slot])}
    assert rows[known]["status"] == "done"
    assert rows[unknown]["status"] == "ignored"
    assert rows[unknown]["stderr"] == "jobd: worker w0 has no slot 'high' for target 'v'"
    assert rows[null_slot]["status"] == "ignored"
    assert "no slot 'default'" in rows[null_slot]["stderr"]


def test_jobs_log_one_line_at_start_and_finish(jobs, start_worker):
    # The log lines are the behaviour under test (docs/operations.md, "Logging").
    worker = start_worker({"t": 1}, command="sh -c 'exit 4'")
    (job_id,) = jobs.insert("t")
    worker.request("poll")
    jobs.wait_done([job_id])
    log = worker.log()
    assert f"job {job_id} t/default started pid" in log
    assert f"job {job_id} t/default finished in" in log
    assert "fail code=4" in log


def test_safety_poll_finds_jobs_without_a_poke(jobs, start_worker):
    worker = start_worker({"t": 2}, command="/bin/true", poll_interval=0.2)
    wait_idle(worker)  # its start-up claim found nothing: only a safety poll can come now
    ids = jobs.insert("t", 3)
    rows = jobs.wait_done(ids, timeout=10)
    assert all(r["result"] == "ok" for r in rows)
    assert claimed(worker) == {"by_target": 3, "named": 0}


def test_waiting_jobs_at_start_are_claimed(jobs, start_worker):
    ids = jobs.insert("t", 5)
    worker = start_worker({"t": 2}, command="/bin/true")  # no safety poll, no poll
    assert all(r["result"] == "ok" for r in jobs.wait_done(ids))
    assert claimed(worker) == {"by_target": 5, "named": 0}


def test_worker_runs_as_the_user_it_was_started_as(jobs, start_worker):
    row = run_one(jobs, start_worker, "id -u")
    assert row["stdout"].strip() == str(os.getuid())


def test_the_worker_measures_how_long_each_job_ran(jobs, start_worker):
    worker = start_worker({"t": 1}, command="sh -c 'sleep $(cat)'")  # its data on stdin
    # The worker's own measure: the duration a manual run replies with (the row keeps
    # whole seconds only), for a job of 0.2 s and one of 0.5 s.
    for seconds in (0.2, 0.5):
        (job_id,) = jobs.insert("t", status="manual", data=str(seconds))
        reply = worker.request("run-manual", {"ids": [job_id]})
        assert reply["errors"] == {}
        assert seconds <= reply["jobs"][job_id]["duration"] < seconds + 0.5
        row = jobs.row(job_id)
        assert row["time_finished"] - row["time_started"] in (0, 1)
