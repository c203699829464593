def test_seed_insert_runs(jobs, start_worker):
    worker = start_worker({"t": 2}, command="sh -c 'echo out-{id}'")
    (job_id,) = jobs.insert("t")
    worker.request("poll", {"targets": ["t"]})
    (row,) = jobs.wait_done([job_id])
    assert row["status"] == "done" and row["result"] == "ok"
    assert row["stdout"] == f"out-{job_id}\n"
