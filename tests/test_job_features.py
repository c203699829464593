"""Job features on the worker: delayed jobs, priorities (and the claim's index), data on
stdin, schedules' ids, per-target launchers and result callbacks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobd.store.jobstore import SLOW_READS_IN_A_ROW, Claim, JobStore, Queries, SlotWant

from conftest import wait_for


def launch_times(path) -> dict[int, float]:
    """{id: UNIX time the launcher started} from lines "id time"."""
    out = {}
    for line in path.read_text().splitlines():
        job_id, at = line.split()
        out[int(job_id)] = float(at)
    return out


def test_delayed_job_starts_within_1_s_of_run_at_without_a_poke(jobs, start_worker, tmp_path):
    log = tmp_path / "starts"
    due = int(time.time()) + 3
    (delayed,) = jobs.insert("t", run_at=due)
    (zero,) = jobs.insert("t", run_at=0)  # 0 and NULL both mean "as soon as possible"
    # The worker's own start-up poll is the only one; no poke comes at the due time.
    start_worker({"t": 2}, command=f"sh -c 'echo {{id}} $(date +%s.%N) >> {log}'")
    jobs.wait_done([zero], timeout=5)
    assert jobs.row(delayed)["status"] == "waiting"
    jobs.wait_done([delayed], timeout=10)
    started = launch_times(log)[delayed]
    assert due <= started < due + 1.0


def test_delayed_job_poked_at_insert_waits_for_its_time(jobs, start_worker, tmp_path):
    log = tmp_path / "starts"
    worker = start_worker({"t": 1}, command=f"sh -c 'echo {{id}} $(date +%s.%N) >> {log}'")
    due = int(time.time()) + 2
    (job_id,) = jobs.insert("t", run_at=due)
    worker.request("poll")
    jobs.wait_done([job_id], timeout=10)
    assert due <= launch_times(log)[job_id] < due + 1.0


async def test_a_claim_hands_its_jobs_over_once_committed_before_the_next_due_time(jobs):
    """claim_jobs calls `committed` as soon as the COMMIT's answer is in: the rows are
    then 'running' for every other connection, and the next due time (read last, in the
    same round trip) is not known yet; it is once claim_jobs returns."""
    due = int(time.time()) + 300
    (now_id,) = jobs.insert("t")
    jobs.insert("t", run_at=due)
    store = JobStore(jobs.db.url, jobs.table, "w1")
    await store.connect()
    seen: list[tuple[list[int], int | None, str]] = []

    def committed(claim: Claim) -> None:
        (status,) = jobs.execute(f"SELECT status FROM `{jobs.table}` WHERE id = %s", (now_id,))
        seen.append(([job.id for job in claim.accepted], claim.next_due, status[0]))

    try:
        claim = await store.claim_jobs(
            {"t": {"default": SlotWant(start=2, room=2)}}, {"t": ["default"]}, 10, committed
        )
    finally:
        await store.close()
    assert seen == [([now_id], None, "running")]
    assert claim.drained == {"t"} and claim.next_due == due


def claim_plan(jobs, query: str, where: tuple) -> dict:
    """EXPLAIN of a claim's locking read (after its plain read, if it has one)."""
    fill = {"t": f"`{jobs.table}`", "free": "%s", "known": "%s"}
    sql = query.format(**fill, lock="FOR UPDATE SKIP LOCKED")
    with jobs.conn.cursor() as cur:
        if query == Queries.select_claimable_from_first:
            cur.execute(Queries.find_first_claimable.format(**fill), where)
        cur.execute("EXPLAIN " + sql, (*where, 10))
        columns = [c[0] for c in cur.description]
        plan = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    assert len(plan) == 1, plan
    return plan[0]


def test_claim_query_uses_an_index(jobs):
    # Enough rows of several targets and statuses that a full scan would be chosen
    # if no index fitted.
    for target in ("a", "b", "c", "d"):
        jobs.insert(target, 500, status="done")
        jobs.insert(target, 50)
    jobs.execute(f"ANALYZE TABLE `{jobs.table}`")
    where = ("b", int(time.time()), "default", "default")
    # The claim index serves both the filter and the priority-then-id order: no filesort;
    # from the first claimable row on, a range of it.
    for query, access in (
        (Queries.select_claimable, "ref"),
        (Queries.select_claimable_from_first, "range"),
    ):
        plan = claim_plan(jobs, query, where)
        assert plan["key"] == "claim_idx", plan
        assert plan["type"] == access, plan
        assert "filesort" not in (plan["Extra"] or ""), plan
    first = jobs.rows("target = 'b' AND status = 'waiting'")[0]["id"]
    assert jobs.execute("SELECT @jobd_priority, @jobd_id") == [(0, first)]


def buffer_pool_reads(jobs) -> int:
    """Pages InnoDB looked up in its buffer pool, server-wide, so far."""
    rows = jobs.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_read_requests'")
    return int(rows[0][1])


async def test_claims_stop_stepping_over_the_jobs_run_while_purge_is_held_back(jobs):
    """A transaction left open elsewhere on the server stops purge: every job run since
    keeps a dead entry in the waiting part of claim_idx, and a claim's locking read from
    the head of the index passes each of them (two pages each).  Such claims take long
    (tens of ms for 30,000 here, over SLOW_CLAIM_READ on any machine); after
    SLOW_READS_IN_A_ROW of them, the target's next claims start at the first claimable
    row, which the plain read before them finds passing the dead entries a leaf page
    (some hundreds of them) at a time."""
    store = JobStore(jobs.db.url, jobs.table, "w1")
    await store.connect()
    want = {"t": {"default": SlotWant(start=1, room=1)}}
    taken, touched = [], []
    try:
        with jobs.purge_held_back("t", dead=30_000):
            jobs.insert("t", 2, priority=-1)  # rows of lower priority, behind those claimed
            for _ in range(SLOW_READS_IN_A_ROW + 1):
                jobs.insert("t")
                before = buffer_pool_reads(jobs)
                claim = await store.claim_jobs(want, {"t": ["default"]}, 10)
                touched.append(buffer_pool_reads(jobs) - before)
                taken += [(job.id, job.priority) for job in claim.accepted]
    finally:
        await store.close()
    last = jobs.execute(f"SELECT MAX(id) FROM `{jobs.table}`")[0][0]
    assert taken == [(last - n, 0) for n in range(SLOW_READS_IN_A_ROW, -1, -1)]  # not -1s
    assert "t" in store.from_first_until
    *slow, fast = touched
    assert min(slow) > 2 * 30_000 - 1000, touched  # two pages a dead entry
    assert fast * 50 < min(slow), touched  # here: 60,135 and 339


async def test_a_claim_from_the_first_claimable_row_takes_what_one_from_the_head_takes(jobs):
    """Priorities, slots with and without room, slots the worker does not have, delayed
    rows: claims that start from the first claimable row take the same rows, in the same
    order, as claims that read claim_idx from its head."""
    now = int(time.time())

    def fill() -> None:
        jobs.insert("t", 3, slot="a", priority=1)
        jobs.insert("t", 2, slot="b", priority=5)
        jobs.insert("t", 2, slot="c")  # not a slot of the worker: ignored
        jobs.insert("t", 2, slot="a", priority=9, run_at=now + 600)  # not due
        jobs.insert("t", 4, slot="a")
        jobs.insert("t", 2, slot="b", priority=-3)

    wants = [
        {"a": SlotWant(start=2, room=3), "b": SlotWant(start=0, room=0)},
        {"a": SlotWant(start=1, room=1), "b": SlotWant(start=2, room=2)},
        {"a": SlotWant(start=4, room=4), "b": SlotWant(start=1, room=1)},
    ]
    outcomes = []
    for from_first in (False, True):
        fill()
        store = JobStore(jobs.db.url, jobs.table, "w1")
        await store.connect()
        if from_first:
            store.from_first_until["t"] = float("inf")
        seen = []
        try:
            for want in wants:
                claim = await store.claim_jobs({"t": want}, {"t": ["a", "b"]}, 10)
                seen.append(
                    (
                        [(j.slot, j.priority, j.marked_running) for j in claim.accepted],
                        len(claim.ignored), sorted(claim.full), sorted(claim.drained),
                    )
                )  # fmt: skip
        finally:
            await store.close()
        outcomes.append(seen)
        jobs.execute(f"DELETE FROM `{jobs.table}`")
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0][0] == [("a", 1, True), ("a", 1, True), ("a", 1, False)]


def test_data_arrives_on_stdin(jobs, start_worker):
    worker = start_worker({"t": 2}, command="cat")
    payload = json.dumps({"to": "ann@example.org", "n": [1, 2, 3], "text": "grüße"})
    (with_data,) = jobs.insert("t", data=payload)
    (without,) = jobs.insert("t")
    worker.request("poll")
    rows = {r["id"]: r for r in jobs.wait_done([with_data, without])}
    assert json.loads(rows[with_data]["stdout"]) == json.loads(payload)
    assert rows[without]["stdout"] == ""  # empty stdin, and `cat` did not hang
    assert rows[without]["result"] == "ok"


def test_invalid_json_data_is_refused_by_the_table(jobs):
    import pymysql

    with pytest.raises(pymysql.err.OperationalError):
        jobs.insert("t", data="{not json")


def test_schedule_and_run_ids_reach_the_launcher(jobs, start_worker):
    worker = start_worker({"t": 2}, command="sh -c 'echo {schedule}/{id} $JOBD_SCHEDULE'")
    (scheduled,) = jobs.insert("t", schedule_id=42, scheduled_at=int(time.time()))
    (plain,) = jobs.insert("t")
    worker.request("poll")
    rows = {r["id"]: r for r in jobs.wait_done([scheduled, plain])}
    assert rows[scheduled]["stdout"] == f"42/{scheduled} 42\n"
    assert rows[plain]["stdout"] == f"/{plain}\n"


def test_a_target_can_have_its_own_launcher(jobs, start_worker):
    targets = {
        "plain": 1,
        "special": {
            "concurrency": 1,
            "description": "runs its own program",
            "launcher": {"command": "sh -c 'echo special {id} $MODE'", "env": {"MODE": "x"}},
        },
    }
    worker = start_worker(targets, command="sh -c 'echo plain {id}'")
    (plain,) = jobs.insert("plain")
    (special,) = jobs.insert("special")
    worker.request("poll")
    rows = {r["id"]: r for r in jobs.wait_done([plain, special])}
    assert rows[plain]["stdout"] == f"plain {plain}\n"
    assert rows[special]["stdout"] == f"special {special} x\n"


class Receiver:
    """A loopback HTTP server that records the callbacks it gets."""

    def __init__(self, failures: int = 0, delay: float = 0.0, status: int = 500) -> None:
        self.posts: list[tuple[str, dict, float]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.posts.append((self.path, body, time.time()))
                time.sleep(delay)
                failing = receiver.failures > 0 or self.path == "/always-fails"
                receiver.failures -= 1
                self.send_response(status if failing else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_callbacks_are_delivered_and_retried(jobs, start_worker, receiver):
    http = receiver(failures=2)
    worker = start_worker(
        {"t": 2, "cb": {"concurrency": 1, "callback_url": f"{http.url}/target-default"}},
        command="sh -c 'sleep 0.1; echo out {id}; printf %0500d 0 >&2; exit 3'",
        callbacks={"output_limit": 100, "max_attempts": 4, "backoff": 0.1},
    )
    (job_id,) = jobs.insert("t", callback_url=f"{http.url}/hook?x=1")
    worker.request("poll")
    jobs.wait_done([job_id])
    wait_for(lambda: jobs.row(job_id)["callback_result"], 10, "the callback result")
    assert jobs.row(job_id)["callback_result"] == "delivered: HTTP 200, attempt 3"
    assert len(http.posts) == 3
    path, body, _ = http.posts[-1]
    assert path == "/hook?x=1"
    assert body["id"] == job_id and body["target"] == "t" and body["slot"] == "default"
    assert (body["result"], body["return_code"], body["signal"]) == ("fail", 3, None)
    assert body["stdout"] == f"out {job_id}\n" and body["stdout_truncated"] is False
    assert body["stderr"] == "0" * 100 and body["stderr_truncated"] is True
    assert 0.1 <= body["duration"] < 5  # the job sleeps 0.1 s

    # The target's callback_url serves jobs without their own; a receiver that keeps
    # failing is given up after max_attempts, and that is recorded too.
    (default_cb,) = jobs.insert("cb")
    (failing,) = jobs.insert("t", callback_url=f"{http.url}/always-fails")
    worker.request("poll")
    wait_for(lambda: jobs.row(default_cb)["callback_result"], 10, "default callback")
    wait_for(lambda: jobs.row(failing)["callback_result"], 10, "failing callback")
    # The receiver's two failures went to the first job: this one is taken at once.
    assert jobs.row(default_cb)["callback_result"] == "delivered: HTTP 200, attempt 1"
    assert any(p == "/target-default" and b["id"] == default_cb for p, b, _ in http.posts)
    assert jobs.row(failing)["callback_result"] == "failed after 4 attempts: HTTP 500"


def test_slow_callback_receivers_do_not_delay_other_jobs(jobs, start_worker, receiver, tmp_path):
    http = receiver(delay=2.0)
    log = tmp_path / "starts"
    worker = start_worker({"t": 1}, command=f"sh -c 'echo {{id}} $(date +%s.%N) >> {log}'")
    (first,) = jobs.insert("t", callback_url=f"{http.url}/slow")
    second, third = jobs.insert("t", 2)
    worker.request("poll")
    jobs.wait_done([first, second, third])
    starts = launch_times(log)
    # The next jobs ran while the first one's callback was still being answered.
    assert starts[third] < http.posts[0][2] + 2.0
    assert jobs.row(first)["callback_result"] is None
    wait_for(lambda: jobs.row(first)["callback_result"], 10, "the slow callback")
