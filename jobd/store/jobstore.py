"""The jobs table: every change of a row's state is one named method of `JobStore`
over one named query of `Queries` (jobd.store.queries).

    waiting --claim_jobs--> accepted --mark_running--> running --record_outcomes--> done
    waiting --claim_jobs (a slot with a free place)---> running
    waiting --claim_named (named by a poll, a slot with a free place)--> running
                                                        running --record_outcomes--> waiting
                                                                  (a retry, with run_at)
    waiting --claim_jobs (slot not served)--> ignored
    manual  --accept_manual--> manual, reserved by this worker --mark_running--> running
    accepted / reserved manual --release_jobs--> waiting / manual
    accepted by this worker but unknown to it --release_unknown--> waiting
    accepted / reserved manual / running of an instance that will not write them again
            --InstanceStore.rescue (jobd.store.settle)--> waiting / manual / waiting or done+fail

Storage knows no sockets and no processes.  Every database failure surfaces as
`StorageError` (see jobd.store.pool), whose message never contains the password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from jobd.config import DatabaseURL
from jobd.jobs import Claim, Job, Outcome, Retry, SlotWant
from jobd.store.pool import Database, StorageError
from jobd.store.queries import REQUIRED_COLUMNS, Queries
from jobd.store.rows import ManualRow, batches, claimed_job, take

__all__ = ["REQUIRED_COLUMNS", "JobStore", "Queries", "StorageError"]

log = logging.getLogger("jobd.storage")

#: The columns of an outcome, and the attribute of `Outcome` that each holds.
OUTCOME_COLUMNS = {
    "result": "result", "return_code": "code", "sig": "signal", "stdout": "stdout",
    "stderr": "stderr", "duration_ms": "duration_ms",
}  # fmt: skip
#: SLOW_READS_IN_A_ROW locking reads of one target's claims that each take longer than
#: SLOW_CLAIM_READ (seconds) have most likely stepped over many rows left behind for
#: purge (one alone may be the machine's hiccup): the target's claims then start from its
#: first claimable row for FROM_FIRST_FOR seconds, and read from the head again after
#: that, to see whether purge has caught up.  Starting from the first row costs a
#: statement more, which is not worth it while purge keeps up.
SLOW_CLAIM_READ = 0.002
SLOW_READS_IN_A_ROW = 3
FROM_FIRST_FOR = 60.0


class JobStore(Database):
    """All access of one worker to the jobs table."""

    def __init__(
        self, url: DatabaseURL, table: str, worker: str, instance: str = "", pool_size: int = 3
    ) -> None:
        # Multi-statements: a claim sends START TRANSACTION and COMMIT along with its other
        # statements (every value is still a parameter; see claim_jobs).
        super().__init__(url, table, pool_size, multi_statements=True)
        self.worker = worker
        #: The worker instance (jobd.store.instances) whose rows these are: every row it
        #: claims records it, and every later write to the row is guarded by it.
        self.instance = instance
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
                take(claim, target, slots, rows, want, full=len(rows) >= fetch)
            if begin:
                return claim  # nothing was selected, no transaction opened
            claim.drained = set(wanted) - claim.full - claim.partial
            statements: list[str] = []
            params: list[Any] = []
            if claim.accepted:
                ids = [job.id for job in claim.accepted]
                run = [job.id for job in claim.accepted if job.marked_running] or [0]
                statements.append(self._sql(Queries.accept, ids=len(ids), run=len(run)))
                params += [self.worker, self.instance, now, *run, *run, now, *run, *ids]
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
            params += [self.worker, self.instance, now, now, job_id, target, now, *free, job_id]
        jobs = []
        async with self._cursor() as cur:
            await cur.execute("; ".join([f"{update}; {select}"] * len(ids)), params)
            for n in range(len(ids)):
                if n > 0:
                    await cur.nextset()
                await cur.nextset()  # from the UPDATE's result to the SELECT's
                for row in await cur.fetchall():
                    job = claimed_job(target, row)  # attempts: this start counted
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
                    (self.worker, self.instance, now, *(row.id for row in accepted)),
                )
        return accepted, errors

    async def mark_running(self, ids: Sequence[int]) -> list[int]:
        """accepted -> running, right before the processes are spawned.  Returns the ids
        this instance holds running now: a job whose row it no longer holds must not
        start."""
        async with self._cursor() as cur:
            changed = await cur.execute(
                self._sql(Queries.mark_running, ids=len(ids)),
                (int(time.time()), *ids, self.instance),
            )
            if changed == len(ids):
                return list(ids)
            await cur.execute(
                self._sql(Queries.select_held_running, ids=len(ids)), (*ids, self.instance)
            )
            held = {row[0] for row in await cur.fetchall()}
        return [i for i in ids if i in held]

    async def record_outcomes(
        self, outcomes: Sequence[tuple[int, Outcome, Retry | None]]
    ) -> list[int]:
        """running -> done with the result and output, or running -> waiting for a retry;
        one transaction for the whole batch.  Returns the ids of rows this instance no
        longer holds (taken back by a rescue): their writes changed nothing."""
        now = int(time.time())
        done = [(job_id, o) for job_id, o, retry in outcomes if retry is None]
        retries = [
            (
                o.stdout,
                o.stderr,
                o.duration_ms,
                now,
                retry.run_at,
                retry.summary,
                job_id,
                self.instance,
            )
            for job_id, o, retry in outcomes
            if retry is not None
        ]
        fenced: list[int] = []
        parts = batches(done)
        async with self._cursor(transaction=len(parts) + len(retries) > 1) as cur:
            for batch in parts:
                ids = [job_id for job_id, _ in batch]
                sets, params = self._outcome_columns(ids, [o for _, o in batch])
                changed = await cur.execute(
                    self._sql(
                        Queries.record_done.replace("{outcome}", sets),
                        ids=len(ids),
                        values=len(ids),
                    ),
                    (now, *params, *ids, self.instance),
                )
                if changed < len(ids):
                    fenced += await self._not_held(cur, Queries.select_held_done, ids)
            for retry in retries:
                if not await cur.execute(self._sql(Queries.record_retry), retry):
                    fenced += await self._not_held(cur, Queries.select_held_retry, retry[-2:-1])
        return fenced

    async def _not_held(self, cur: Any, query: str, ids: Sequence[int]) -> list[int]:
        """Of `ids`, whose write changed nothing, those not written by this instance
        before (a repeat after a lost acknowledgement is not a fenced write)."""
        if len(ids) == 1:
            await cur.execute(self._sql(query), (ids[0], self.instance))
        else:
            await cur.execute(self._sql(query, ids=len(ids)), (*ids, self.instance))
        written = {row[0] for row in await cur.fetchall()}
        return [i for i in ids if i not in written]

    def _outcome_columns(
        self, ids: Sequence[int], outcomes: Sequence[Outcome]
    ) -> tuple[str, list[Any]]:
        """The SET list of record_done for these jobs, and its parameters."""
        sets, params = [], []
        for column, attribute in OUTCOME_COLUMNS.items():
            values = [getattr(o, attribute) for o in outcomes]
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

    async def release_jobs(self, ids: Sequence[int]) -> list[int]:
        """Jobs claimed or reserved by this worker that it will not start (never started:
        the caller's word): accepted rows go back to waiting, reserved manual rows stay
        manual and free.  Returns the ids of rows this instance no longer holds."""
        if not ids:
            return []
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._sql(Queries.select_held, ids=len(ids)), (*ids, self.instance))
            held = [row[0] for row in await cur.fetchall()]
            if held:
                await cur.execute(self._sql(Queries.release, ids=len(held)), (*held, self.instance))
        return [i for i in ids if i not in held]

    async def release_unknown(self, known: Iterable[int]) -> int:
        """Rows claimed in this worker's name that it does not hold (a claim whose commit
        went through but whose acknowledgement was lost) go back to waiting.  `known` must
        name every job the worker holds: queued, starting, running or not yet written."""
        ids = list(known) or [0]
        async with self._cursor() as cur:
            return int(
                await cur.execute(
                    self._sql(Queries.release_unknown, ids=len(ids)), (self.instance, *ids)
                )
            )
