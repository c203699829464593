"""run-manual: rows in status 'manual' run on request; the reply carries every outcome."""

from __future__ import annotations

import pytest

from jobd.wire.protocol import RequestError

from conftest import wait_for


def test_run_manual_replies_with_results_and_errors(jobs, start_worker):
    worker = start_worker({"t": 2, "u": 1}, command="sh -c 'echo out-{id}; exit $(({id} % 2))'")
    first, second = jobs.insert("t", 2, status="manual")  # one even id (ok), one odd (fail)
    (waiting,) = jobs.insert("t")  # not manual: reported, left unchanged
    (other_target,) = jobs.insert("x", status="manual")  # a target this worker does not serve
    jobs.execute(f"UPDATE `{jobs.table}` SET status = 'waiting' WHERE id = %s", (waiting,))
    worker.request("pause", {"targets": ["t"]})  # so `waiting` stays waiting
    reply = worker.request("run-manual", {"ids": [first, second, waiting, other_target, 999999]})
    results = {first % 2: first, second % 2: second}
    assert set(reply["jobs"]) == {first, second}
    assert reply["jobs"][results[0]] == {
        "result": "ok",
        "code": 0,
        "signal": None,
        "stdout": f"out-{results[0]}\n",
        "stderr": "",
        "duration": reply["jobs"][results[0]]["duration"],  # checked below
    }
    for job_id in (first, second):
        assert 0 < reply["jobs"][job_id]["duration"] < 5  # the run's own seconds
    assert reply["jobs"][results[1]]["result"] == "fail"
    assert reply["jobs"][results[1]]["code"] == 1
    assert reply["errors"] == {
        waiting: "status is waiting, not manual",
        other_target: "worker w0 does not serve target x",
        999999: "job 999999 not found",
    }
    # Manual runs go ahead on a paused target (an operator asked for them), and the
    # rows were written before the reply came.
    assert jobs.row(results[0])["result"] == "ok"
    assert jobs.row(results[1])["result"] == "fail"
    assert jobs.row(waiting)["status"] == "waiting"
    assert jobs.row(other_target)["status"] == "manual"


def test_manual_rows_are_not_claimed_by_polls(jobs, start_worker):
    worker = start_worker({"t": 1})
    (manual,) = jobs.insert("t", status="manual")
    (normal,) = jobs.insert("t")
    worker.request("poll")
    jobs.wait_done([normal])  # the claim that took it passed the manual row over
    assert jobs.row(manual)["status"] == "manual"
    assert worker.request("status")["claimed"] == {"by_target": 1, "named": 0}
    assert worker.request("run-manual", {"ids": [manual]})["jobs"][manual]["result"] == "ok"


def test_run_manual_twice_runs_once(jobs, start_worker):
    worker = start_worker({"t": 1})
    (job_id,) = jobs.insert("t", status="manual")
    assert job_id in worker.request("run-manual", {"ids": [job_id]})["jobs"]
    again = worker.request("run-manual", {"ids": [job_id]})
    assert again == {"jobs": {}, "errors": {job_id: "status is done, not manual"}}
    assert jobs.row(job_id)["attempts"] == 1


def test_run_manual_validates_ids(jobs, start_worker):
    worker = start_worker({"t": 1})
    for bad in ([], ["1"], [0], [-5], [2**40], "1"):
        with pytest.raises(RequestError) as err:
            worker.request("run-manual", {"ids": bad})
        assert err.value.code == "bad_request"


def test_big_outputs_through_the_master_are_cut_in_the_reply_not_in_the_row(
    jobs, start_master, start_worker
):
    master = start_master()
    start_worker(
        {"t": 2},
        command="sh -c 'head -c 1500000 /dev/zero | tr \"\\0\" x'",
        master=master.address,
        max_output_buffer=2_000_000,
    )
    wait_for(lambda: master.request("status")["workers"], 10, "the worker registered")
    ids = jobs.insert("t", 2, status="manual")
    # 3 MB of output in all: more than the master's 1 MiB message limit.
    reply = master.request("run-manual", {"jobs": [{"id": i, "target": "t"} for i in ids]})
    assert reply["errors"] == {}
    for job_id in ids:
        stdout = reply["jobs"][job_id]["stdout"]
        assert stdout.startswith("x" * 1000) and "more characters in the row]" in stdout
        assert len(stdout) < 200_000
        assert len(jobs.row(job_id)["stdout"]) == 1_500_000
