"""The jobs table: every change of a row's state is one named method of `JobStore`
over one named query of `Queries`.

    waiting --claim_jobs--> accepted --mark_running--> running --record_outcomes--> done
    waiting --claim_jobs (a slot with a free place)---> running
    waiting --claim_named (named by a poll, a slot with a free place)--> running
                                                        running --record_outcomes--> waiting
                                                                  (a retry, with run_at)
    waiting --claim_jobs (slot not served)--> ignored
    manual  --accept_manual--> manual, reserved by this worker --mark_running--> running
    accepted / reserved manual --release_jobs--> waiting / manual
    accepted / reserved manual / running of a stopped worker --recover_worker-->
            waiting / manual / waiting (attempts left) or done+fail
    accepted by this worker but unknown to it --release_unknown--> waiting

Storage knows no sockets and no processes.  Every database failure surfaces as
`StorageError` (see jobd.db), whose message never contains the password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobd.config import DatabaseURL
from jobd.db import Database, StorageError
from jobd.jobs import Job, Outcome, Retry

__all__ = ["REQUIRED_COLUMNS", "Claim", "JobStore", "Queries", "StorageError"]

DEFAULT_SLOT = "default"

#: Columns jobd reads or writes; `jobd --check` insists on all of them.
REQUIRED_COLUMNS = (
    "id", "target", "slot", "time_created", "time_started", "time_finished", "status",
    "result", "return_code", "sig", "stdout", "stderr",
    "priority", "run_at", "attempts", "worker", "time_claimed", "attempt_log",
    "data", "callback_url", "callback_result", "schedule_id", "scheduled_at",
)  # fmt: skip

log = logging.getLogger("jobd.storage")


class Queries:
    """Every SQL statement jobd runs.  `{t}` is the (validated, quoted) table name;
    `{ids}` and `{slots}` expand to placeholders.  All values are parameters."""

    probe_skip_locked = "SELECT id FROM {t} WHERE 1 = 0 FOR UPDATE SKIP LOCKED"
    columns = (
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
    )
    # The rows one target's claim may take: waiting and due, of slots with room, plus rows
    # of slots this worker does not serve (to be ignored).  Its placeholders: target, now,
    # the free slots, the known slots.
    claimable = (
        " FROM {t} WHERE status = 'waiting' AND target = %s AND (run_at IS NULL OR run_at <= %s)"
        " AND (COALESCE(slot, 'default') IN ({free}) OR COALESCE(slot, 'default') NOT IN ({known}))"
    )
    claimable_columns = (
        "SELECT id, COALESCE(slot, 'default') AS slot, priority, attempts, data, callback_url,"
        " schedule_id"
    )
    best_first = " ORDER BY priority DESC, id LIMIT %s {lock}"
    # One per target in a claim: the claimable rows, best first (claim_idx, no sort).
    select_claimable = claimable_columns + claimable + best_first
    # The same, from the first claimable row on, which a plain read finds first (in the
    # same round trip): what a claim sends while purge is behind (see claim_jobs).  A row
    # that leaves 'waiting' leaves its entry in claim_idx behind until purge removes it,
    # and a locking read pays for every entry it passes (a lock check each) where a plain
    # read skips old ones for far less (behind a stopped purge: 339 pages touched against
    # 60,135; entries only just left behind cost it nearly as much as the locking read,
    # which is why this is not the claim of every day).  With no row found, the
    # variables keep what an earlier claim of the connection left (NULL at first): the
    # locking read then takes only rows that became claimable after the plain read, if
    # any, as it would with NULL (none).  Either is right: such a row is left for the
    # claim after, as one committed just after this claim would be (its poll follows).
    find_first_claimable = (
        "SELECT priority, id INTO @jobd_priority, @jobd_id" + claimable +
        " ORDER BY priority DESC, id LIMIT 1"
    )  # fmt: skip
    select_claimable_from_first = (
        claimable_columns + claimable +
        " AND (priority < @jobd_priority OR (priority = @jobd_priority AND id >= @jobd_id))"
        + best_first
    )  # fmt: skip
    # Rows that start at once go straight to 'running' (saving a statement and a round
    # trip on the hot path); the others are 'accepted' and wait in their slot.
    accept = (
        "UPDATE {t} SET worker = %s, time_claimed = %s,"
        " status = IF(id IN ({run}), 'running', 'accepted'),"
        " time_started = IF(id IN ({run}), %s, time_started),"
        " attempts = attempts + IF(id IN ({run}), 1, 0)"
        " WHERE id IN ({ids})"
    )
    # A row a poll names (its client has just added it), by its primary key: no locking
    # read over claim_idx and one round trip, with the SELECT right behind it.  Autocommit:
    # the guard `status = 'waiting'` lets one worker alone take it, and ROW_COUNT() (of
    # the UPDATE before it) makes the SELECT return the row only to the worker that did.
    claim_named = (
        "UPDATE {t} SET worker = %s, time_claimed = %s, status = 'running', time_started = %s,"
        " attempts = attempts + 1 WHERE id = %s AND status = 'waiting' AND target = %s"
        " AND (run_at IS NULL OR run_at <= %s) AND COALESCE(slot, 'default') IN ({free})"
    )
    select_named = claimable_columns + " FROM {t} WHERE id = %s AND ROW_COUNT() = 1"
    ignore = (
        "UPDATE {t} SET status = 'ignored', worker = %s, time_finished = %s,"
        " stderr = CONCAT('jobd: worker ', %s, ' has no slot ''', COALESCE(slot, 'default'),"
        " ''' for target ''', target, '''')"
        " WHERE id IN ({ids})"
    )
    # A manual row stays 'manual' while reserved, so a crashed worker's reservation
    # goes back to 'manual' and never turns into an automatic run.
    select_for_manual = (
        "SELECT id, target, COALESCE(slot, 'default') AS slot, priority, status, worker,"
        " attempts, data, callback_url, schedule_id FROM {t} WHERE id IN ({ids}) FOR UPDATE"
    )
    reserve_manual = (
        "UPDATE {t} SET worker = %s, time_claimed = %s"
        " WHERE id IN ({ids}) AND status = 'manual' AND worker IS NULL"
    )
    mark_running = (
        "UPDATE {t} SET status = 'running', time_started = %s, attempts = attempts + 1"
        " WHERE id IN ({ids}) AND status IN ('accepted', 'manual') AND worker = %s"
    )
    # The `status = 'running' AND worker = %s` guards make a repeated write (after a
    # lost acknowledgement) change nothing: no result is written twice.
    # One statement for a batch of finished jobs.  {outcome} sets each of OUTCOME_COLUMNS:
    # to one value when every job of the batch has the same (most results, codes and
    # empty outputs), else to each row's own, which ELT(FIELD(id, ids...), values...) picks.
    record_done = (
        "UPDATE {t} SET status = 'done', time_finished = %s, {outcome}"
        " WHERE id IN ({ids}) AND status = 'running' AND worker = %s"
    )
    same_value = "{column} = %s"
    value_per_row = "{column} = ELT(FIELD(id, {ids}), {values})"
    record_retry = (
        "UPDATE {t} SET status = 'waiting', result = NULL, return_code = NULL, sig = NULL,"
        " stdout = %s, stderr = %s, time_finished = %s, run_at = %s, worker = NULL,"
        " time_claimed = 0, attempt_log = CONCAT(COALESCE(attempt_log, ''), %s)"
        " WHERE id = %s AND status = 'running' AND worker = %s"
    )
    # Also takes rows claimed straight to 'running' that never started.  MariaDB
    # assigns left to right: `attempts` must be set while `status` is still the old one.
    release = (
        "UPDATE {t} SET attempts = attempts - IF(status = 'running', 1, 0),"
        " status = IF(status = 'manual', 'manual', 'waiting'), worker = NULL,"
        " time_claimed = 0 WHERE id IN ({ids}) AND status IN ('accepted', 'manual', 'running')"
        " AND worker = %s"
    )
    next_due = (
        "SELECT MIN(run_at) FROM {t}"
        " WHERE status = 'waiting' AND target IN ({targets}) AND run_at > %s"
    )
    record_callback = "UPDATE {t} SET callback_result = %s WHERE id = %s"
    release_unknown = (
        "UPDATE {t} SET attempts = attempts - IF(status = 'running', 1, 0),"
        " status = 'waiting', worker = NULL, time_claimed = 0"
        " WHERE worker = %s AND status IN ('accepted', 'running') AND id NOT IN ({ids})"
    )
    recover_reserved = (
        "UPDATE {t} SET status = IF(status = 'accepted', 'waiting', status), worker = NULL,"
        " time_claimed = 0 WHERE worker = %s AND status IN ('accepted', 'manual')"
    )
    select_running_of = (
        "SELECT id, target, attempts FROM {t} WHERE worker = %s AND status = 'running' FOR UPDATE"
    )
    recover_retry = (
        "UPDATE {t} SET status = 'waiting', worker = NULL, time_claimed = 0, run_at = NULL,"
        " attempt_log = CONCAT(COALESCE(attempt_log, ''), %s)"
        " WHERE id = %s AND status = 'running' AND worker = %s"
    )
    recover_fail = (
        "UPDATE {t} SET status = 'done', result = 'fail', time_finished = %s,"
        " stderr = CONCAT(COALESCE(stderr, ''), %s)"
        " WHERE id = %s AND status = 'running' AND worker = %s"
    )


#: The columns of an outcome, each named as the attribute of `Outcome` that it holds.
OUTCOME_COLUMNS = ("result", "return_code", "sig", "stdout", "stderr")
#: SLOW_READS_IN_A_ROW locking reads of one target's claims that each take longer than
#: SLOW_CLAIM_READ (seconds) have most likely stepped over many rows left behind for
#: purge (one alone may be the machine's hiccup): the target's claims then start from its
#: first claimable row for FROM_FIRST_FOR seconds, and read from the head again after
#: that, to see whether purge has caught up.  Starting from the first row costs a
#: statement more, which is not worth it while purge keeps up (0.15 to 0.3 ms a claim of
#: one job here).
SLOW_CLAIM_READ = 0.002
SLOW_READS_IN_A_ROW = 3
FROM_FIRST_FOR = 60.0
#: Most output bytes in one batched UPDATE, well under max_allowed_packet (16 MiB).
MAX_BATCH_BYTES = 4 << 20


@dataclass(frozen=True)
class SlotWant:
    """What a claim may take for one slot."""

    start: int  # rows that start at once (claimed straight to 'running')
    room: int  # rows in all: those, and those that wait in the slot, soon to start


@dataclass
class Claim:
    """What one claim transaction took."""

    accepted: list[Job] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    #: Targets whose select came back full: more rows may be waiting.
    full: set[str] = field(default_factory=set)
    #: Targets with a slot that had no room and was not asked for: rows may wait for it.
    partial: set[str] = field(default_factory=set)
    #: Targets found dry: neither full nor partial.
    drained: set[str] = field(default_factory=set)
    #: The earliest future not-before time of a waiting row of the drained targets.
    next_due: int | None = None


@dataclass(frozen=True)
class ManualRow:
    id: int
    target: str
    slot: str
    priority: int
    status: str
    worker: str | None
    attempts: int
    data: str | None
    callback_url: str | None
    schedule_id: int | None

    def job(self) -> Job:
        return Job(
            self.id, self.target, self.slot, self.priority, manual=True, attempts=self.attempts,
            data=self.data, callback_url=self.callback_url, schedule_id=self.schedule_id,
        )  # fmt: skip


@dataclass(frozen=True)
class Recovery:
    """What recover_worker did with a stopped worker's rows."""

    released: int  # accepted or reserved rows given back
    retried: list[int]  # running rows back to waiting
    failed: list[int]  # running rows settled as failed


def _batches(done: list[tuple[int, Outcome]]) -> list[list[tuple[int, Outcome]]]:
    """Split finished jobs so no single UPDATE carries more than MAX_BATCH_BYTES of output."""
    batches: list[list[tuple[int, Outcome]]] = []
    size = 0
    for item in done:
        weight = len(item[1].stdout) + len(item[1].stderr)
        if not batches or (batches[-1] and size + weight > MAX_BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += weight
    return batches


def _claimed_job(target: str, row: Sequence[Any]) -> Job:
    """The job of a row read with Queries.claimable_columns."""
    job_id, slot, priority, attempts, data, callback_url, schedule_id = row
    return Job(
        job_id, target, slot, priority, attempts=attempts, data=data,
        callback_url=callback_url, schedule_id=schedule_id,
    )  # fmt: skip


def _take(
    claim: Claim,
    target: str,
    slots: Mapping[str, SlotWant],
    rows: Iterable[Sequence[Any]],
    want: int,
    full: bool,
) -> None:
    """Sort one target's selected rows into the claim: the first `start` rows of a slot
    start at once, more up to its `room` wait in it, rows of unknown slots are ignored,
    and the rest stays waiting (then the target may have more: it is `full`)."""
    room = {slot: w.room for slot, w in slots.items()}
    start = {slot: w.start for slot, w in slots.items()}
    if full:
        claim.full.add(target)
    for row in rows:
        slot = row[1]
        if slot not in room:
            claim.ignored.append(row[0])
        elif room[slot] > 0 and want > 0:
            room[slot] -= 1
            want -= 1
            job = _claimed_job(target, row)
            if start[slot] > 0:
                start[slot] -= 1
                job.marked_running = True
                job.attempts += 1
            claim.accepted.append(job)
        else:
            claim.full.add(target)  # rows left behind for a slot with no room


class JobStore(Database):
    """All access of one worker to the jobs table."""

    def __init__(self, url: DatabaseURL, table: str, worker: str, pool_size: int = 3) -> None:
        # Multi-statements: a claim sends START TRANSACTION and COMMIT along with its other
        # statements (every value is still a parameter; see claim_jobs).
        super().__init__(url, table, pool_size, multi_statements=True)
        self.worker = worker
        self.skip_locked = True
        #: Targets whose claims start from the first claimable row, until (monotonic).
        self.from_first_until: dict[str, float] = {}
        self._slow_reads: dict[str, int] = {}

    async def detect_skip_locked(self) -> None:
        """Claim with SKIP LOCKED where the server has it (MariaDB 10.6+, MySQL 8)."""
        try:
            async with self._cursor(transaction=True) as cur:
                await cur.execute(self._sql(Queries.probe_skip_locked))
            self.skip_locked = True
        except StorageError as exc:
            if "syntax" not in str(exc).lower():
                raise
            self.skip_locked = False
            log.warning("the server has no SKIP LOCKED; claiming with plain FOR UPDATE")

    async def missing_columns(self) -> list[str]:
        """Columns of REQUIRED_COLUMNS the table lacks (all of them if it does not exist)."""
        async with self._cursor() as cur:
            await cur.execute(Queries.columns, (self.url.database, self.table_name))
            present = {row[0] for row in await cur.fetchall()}
        return [c for c in REQUIRED_COLUMNS if c not in present]

    # --- state changes ------------------------------------------------------------

    async def claim_jobs(
        self,
        wanted: Mapping[str, Mapping[str, SlotWant]],
        known_slots: Mapping[str, Iterable[str]],
        limit: int,
        committed: Callable[[Claim], None] | None = None,
    ) -> Claim:
        """waiting -> running for the first `start` rows of each slot, waiting -> accepted
        for up to `room` in all, and waiting -> ignored for rows of slots this worker does
        not have; one transaction.

        The hot path of every job, so it costs one round trip per target plus one: START
        TRANSACTION travels with the first SELECT, COMMIT with the UPDATEs, and so does the
        next due time of the targets found dry (for the worker's timer of delayed jobs and
        retries), which would otherwise cost a round trip of its own after every claim
        that empties a target.  That SELECT comes after the COMMIT, and `committed` is
        called with the claim as soon as the COMMIT's answer is in, before the next due
        time is read: the jobs can start while the server still works on it.

        A target's SELECTs that take over SLOW_CLAIM_READ, SLOW_READS_IN_A_ROW times in a
        row, have most likely stepped over thousands of rows that purge has not removed yet
        (a transaction open for long anywhere on the server stops purge); that target's
        SELECTs then start from its first claimable row, found by a plain read in the same
        round trip (Queries.find_first_claimable), for FROM_FIRST_FOR seconds."""
        claim = Claim()
        now = int(time.time())
        lock = "FOR UPDATE SKIP LOCKED" if self.skip_locked else "FOR UPDATE"
        begin = "START TRANSACTION; "
        async with self._cursor() as cur:
            for target, slots in wanted.items():
                free_slots = [s for s, want in slots.items() if want.room > 0]
                if len(free_slots) < len(slots):
                    claim.partial.add(target)
                want = min(sum(w.room for w in slots.values()), limit - len(claim.accepted))
                if not free_slots or want <= 0:
                    claim.partial.add(target)  # not asked at all (no room, fetch_limit)
                    continue
                known = list(known_slots[target])
                # Select a little more than wanted, so one full slot at the head of the
                # order does not hide the rows of another.
                fetch = want * 2 if len(free_slots) > 1 else want
                from_first = time.monotonic() < self.from_first_until.get(target, 0.0)
                where = (target, now, *free_slots, *known)
                if from_first:
                    query = f"{Queries.find_first_claimable}; {Queries.select_claimable_from_first}"
                    select_params = (*where, *where, fetch)
                else:
                    query, select_params = Queries.select_claimable, (*where, fetch)
                sql = self._sql(query, lock, free=len(free_slots), known=len(known))
                started = time.monotonic()
                await cur.execute(begin + sql, select_params)
                # From the first result (START TRANSACTION's, the plain read's) to the rows.
                for _ in range(bool(begin) + from_first):
                    await cur.nextset()
                begin = ""
                rows = await cur.fetchall()
                if not from_first:
                    self._count_slow_read(target, time.monotonic() - started)
                _take(claim, target, slots, rows, want, full=len(rows) >= fetch)
            if begin:
                return claim  # nothing was selected, no transaction opened
            claim.drained = set(wanted) - claim.full - claim.partial
            statements: list[str] = []
            params: list[Any] = []
            if claim.accepted:
                ids = [job.id for job in claim.accepted]
                run = [job.id for job in claim.accepted if job.marked_running] or [0]
                statements.append(self._sql(Queries.accept, ids=len(ids), run=len(run)))
                params += [self.worker, now, *run, *run, now, *run, *ids]
            if claim.ignored:
                statements.append(self._sql(Queries.ignore, ids=len(claim.ignored)))
                params += [self.worker, now, self.worker, *claim.ignored]
            statements.append("COMMIT")
            commit_at = len(statements) - 1  # the index of its result
            if claim.drained:
                drained = sorted(claim.drained)
                statements.append(self._sql(Queries.next_due, targets=len(drained)))
                params += [*drained, now]
            await cur.execute("; ".join(statements), params)
            for result in range(len(statements)):
                if result > 0:
                    await cur.nextset()
                if result == commit_at and committed is not None:
                    committed(claim)
                elif result > commit_at:
                    row = await cur.fetchone()
                    claim.next_due = None if row is None or row[0] is None else int(row[0])
        return claim

    async def claim_named(self, target: str, ids: Sequence[int], free: Sequence[str]) -> list[Job]:
        """waiting -> running for rows of `target` that a poll named, each by its id, when
        due and of a slot in `free` (each row then starts at once): the fast path of a job
        submitted alone.  One round trip, an UPDATE and a SELECT a row.  Returns the jobs
        this worker took; the others are left to claim_jobs (not waiting any more, not
        due, another slot, or taken by another worker)."""
        now = int(time.time())
        update = self._sql(Queries.claim_named, free=len(free))
        select = self._sql(Queries.select_named)
        params: list[Any] = []
        for job_id in ids:
            params += [self.worker, now, now, job_id, target, now, *free, job_id]
        jobs = []
        async with self._cursor() as cur:
            await cur.execute("; ".join([f"{update}; {select}"] * len(ids)), params)
            for n in range(len(ids)):
                if n > 0:
                    await cur.nextset()
                await cur.nextset()  # from the UPDATE's result to the SELECT's
                for row in await cur.fetchall():
                    job = _claimed_job(target, row)  # attempts: this start counted
                    job.marked_running = True
                    jobs.append(job)
        return jobs

    def _count_slow_read(self, target: str, took: float) -> None:
        """Count a target's slow locking reads in a row; start from the first row after
        SLOW_READS_IN_A_ROW of them."""
        slow = self._slow_reads.get(target, 0) + 1 if took > SLOW_CLAIM_READ else 0
        self._slow_reads[target] = slow
        if slow < SLOW_READS_IN_A_ROW:
            return
        self._slow_reads[target] = 0
        self.from_first_until[target] = time.monotonic() + FROM_FIRST_FOR
        log.info(
            "claims of %s took %.1f ms: they start from the first claimable row for %.0f s"
            " (InnoDB's purge is behind; is a transaction open for long?)",
            target, took * 1000, FROM_FIRST_FOR,
        )  # fmt: skip

    async def accept_manual(
        self, ids: Sequence[int], refusal: Callable[[ManualRow], str | None]
    ) -> tuple[list[ManualRow], dict[int, str]]:
        """Reserve rows in status 'manual' for this worker, those of `ids` that `refusal`
        finds nothing against.

        Returns the accepted rows and {id: reason} for the others (unknown ids: not found)."""
        now = int(time.time())
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._sql(Queries.select_for_manual, ids=len(ids)), tuple(ids))
            rows = {row[0]: ManualRow(*row) for row in await cur.fetchall()}
            errors = {i: f"job {i} not found" for i in ids if i not in rows}
            accepted = []
            for row in rows.values():
                reason = refusal(row)
                if reason is None:
                    accepted.append(row)
                else:
                    errors[row.id] = reason
            if accepted:
                await cur.execute(
                    self._sql(Queries.reserve_manual, ids=len(accepted)),
                    (self.worker, now, *(row.id for row in accepted)),
                )
        return accepted, errors

    async def mark_running(self, ids: Sequence[int]) -> None:
        """accepted -> running, right before the processes are spawned."""
        async with self._cursor() as cur:
            await cur.execute(
                self._sql(Queries.mark_running, ids=len(ids)),
                (int(time.time()), *ids, self.worker),
            )

    async def record_outcomes(self, outcomes: Sequence[tuple[int, Outcome, Retry | None]]) -> None:
        """running -> done with the result and output, or running -> waiting for a retry;
        one transaction for the whole batch."""
        now = int(time.time())
        done = [(job_id, o) for job_id, o, retry in outcomes if retry is None]
        retries = [
            (o.stdout, o.stderr, now, retry.run_at, retry.summary, job_id, self.worker)
            for job_id, o, retry in outcomes
            if retry is not None
        ]
        batches = _batches(done)
        async with self._cursor(transaction=len(batches) + bool(retries) > 1) as cur:
            for batch in batches:
                ids = [job_id for job_id, _ in batch]
                sets, params = self._outcome_columns(ids, [o for _, o in batch])
                await cur.execute(
                    self._sql(
                        Queries.record_done.replace("{outcome}", sets),
                        ids=len(ids),
                        values=len(ids),
                    ),
                    (now, *params, *ids, self.worker),
                )
            if retries:
                await cur.executemany(self._sql(Queries.record_retry), retries)

    def _outcome_columns(
        self, ids: Sequence[int], outcomes: Sequence[Outcome]
    ) -> tuple[str, list[Any]]:
        """The SET list of record_done for these jobs, and its parameters."""
        sets, params = [], []
        for column in OUTCOME_COLUMNS:
            values = [getattr(o, column) for o in outcomes]
            if all(v == values[0] for v in values):
                sets.append(Queries.same_value.format(column=column))
                params.append(values[0])
            else:
                sets.append(
                    Queries.value_per_row.format(column=column, ids="{ids}", values="{values}")
                )
                params += [*ids, *values]
        return ", ".join(sets), params

    async def record_callback(self, job_id: int, result: str) -> None:
        """Note how the delivery of a job's callback went (after the row is done)."""
        async with self._cursor() as cur:
            await cur.execute(self._sql(Queries.record_callback), (result[:255], job_id))

    async def release_jobs(self, ids: Sequence[int]) -> None:
        """Jobs claimed or reserved by this worker that it will not start (never started:
        the caller's word): accepted rows go back to waiting, reserved manual rows stay
        manual and free."""
        if ids:
            async with self._cursor() as cur:
                await cur.execute(self._sql(Queries.release, ids=len(ids)), (*ids, self.worker))

    async def release_unknown(self, known: Iterable[int]) -> int:
        """Rows claimed in this worker's name that it does not hold (a claim whose commit
        went through but whose acknowledgement was lost) go back to waiting.  `known` must
        name every job the worker holds: queued, starting, running or not yet written."""
        ids = list(known) or [0]
        async with self._cursor() as cur:
            return int(
                await cur.execute(
                    self._sql(Queries.release_unknown, ids=len(ids)), (self.worker, *ids)
                )
            )

    async def recover_worker(
        self, worker: str, retries_left: Callable[[str, int], bool]
    ) -> Recovery:
        """Settle the rows of a worker that stopped without finishing them (this worker
        at its start, or another one with `jobctl recover`): its accepted rows go back to
        waiting, its reserved manual rows back to manual, and its running rows back to
        waiting when `retries_left(target, attempts)`, else done/fail with the reason."""
        reason = f"worker {worker} stopped while the job was running"
        now = int(time.time())
        async with self._cursor(transaction=True) as cur:
            released = await cur.execute(self._sql(Queries.recover_reserved), (worker,))
            await cur.execute(self._sql(Queries.select_running_of), (worker,))
            running = list(await cur.fetchall())
            retried = [job_id for job_id, target, n in running if retries_left(target, n)]
            failed = [job_id for job_id, _, _ in running if job_id not in retried]
            if retried:
                attempts = {job_id: n for job_id, _, n in running}
                await cur.executemany(
                    self._sql(Queries.recover_retry),
                    [(f"attempt {attempts[i]}: {reason}\n", i, worker) for i in retried],
                )
            if failed:
                await cur.executemany(
                    self._sql(Queries.recover_fail),
                    [(now, f"\njobd: {reason}\n", i, worker) for i in failed],
                )
        return Recovery(int(released), retried, failed)
