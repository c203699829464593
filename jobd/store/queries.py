"""Every SQL statement the worker runs on the jobs table, by name (`Queries`), and the
columns it needs.  `jobd.store.jobstore` runs them; nothing else writes SQL for it.
"""

#: Columns jobd reads or writes; `jobd --check` insists on all of them.
REQUIRED_COLUMNS = (
    "id", "target", "slot", "time_created", "time_started", "time_finished", "status",
    "result", "return_code", "sig", "stdout", "stderr",
    "priority", "run_at", "attempts", "worker", "time_claimed", "attempt_log",
    "data", "callback_url", "callback_result", "schedule_id", "scheduled_at",
    "instance", "rescues", "duration_ms", "retry_of", "result_json", "progress",
    "progress_message", "cancel_requested", "unique_key", "unique_active", "submitted_by",
)  # fmt: skip


class Queries:
    """Every SQL statement jobd runs.  `{t}` is the (validated, quoted) table name;
    `{ids}` and `{slots}` expand to placeholders.  All values are parameters.

    Every write of a worker to a row it claimed is guarded by `instance = %s`, the worker
    instance (jobd.store.instances) that claimed it: a row taken back from a dead
    instance is not that instance's any more, and its late writes change nothing.  With
    `status = ...`, the same guards make a repeated write (after a lost acknowledgement)
    change nothing: no result is written twice."""

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
    # read skips old ones for far less (entries only just left behind cost it nearly as
    # much as the locking read, which is why this is not the claim of every day).  With
    # no row found, the variables keep what an earlier claim of the connection left (NULL
    # at first): the locking read then takes only rows that became claimable after the
    # plain read, if any, as it would with NULL (none).  Either is right: such a row is
    # left for the claim after, as one committed just after this claim would be (its poll
    # follows).
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
        "UPDATE {t} SET worker = %s, instance = %s, time_claimed = %s,"
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
        "UPDATE {t} SET worker = %s, instance = %s, time_claimed = %s, status = 'running',"
        " time_started = %s, attempts = attempts + 1 WHERE id = %s AND status = 'waiting'"
        " AND target = %s AND (run_at IS NULL OR run_at <= %s)"
        " AND COALESCE(slot, 'default') IN ({free})"
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
        "UPDATE {t} SET worker = %s, instance = %s, time_claimed = %s"
        " WHERE id IN ({ids}) AND status = 'manual' AND worker IS NULL"
    )
    mark_running = (
        "UPDATE {t} SET status = 'running', time_started = %s, attempts = attempts + 1"
        " WHERE id IN ({ids}) AND status IN ('accepted', 'manual') AND instance = %s"
    )
    # Of these rows, those the instance holds running (after a mark_running that changed
    # fewer rows than it was given: it may be a repeat, or some rows were taken back).
    select_held_running = (
        "SELECT id FROM {t} WHERE id IN ({ids}) AND status = 'running' AND instance = %s"
    )
    # One statement for a batch of finished jobs.  {outcome} sets each of OUTCOME_COLUMNS:
    # to one value when every job of the batch has the same (most results, codes and
    # empty outputs), else to each row's own, which ELT(FIELD(id, ids...), values...) picks.
    record_done = (
        "UPDATE {t} SET status = 'done', time_finished = %s, {outcome}"
        " WHERE id IN ({ids}) AND status = 'running' AND instance = %s"
    )
    same_value = "{column} = %s"
    value_per_row = "{column} = ELT(FIELD(id, {ids}), {values})"
    # Of these rows, those the instance wrote done (after a record_done that changed fewer
    # rows than it was given): a settlement sets `instance` to NULL on every row it takes.
    select_held_done = (
        "SELECT id FROM {t} WHERE id IN ({ids}) AND status = 'done' AND instance = %s"
    )
    # The row keeps the instance (no claim or settlement takes a waiting row by it), so
    # a retry written already is told from one the row's new holder wrote.
    record_retry = (
        "UPDATE {t} SET status = 'waiting', result = NULL, return_code = NULL, sig = NULL,"
        " stdout = %s, stderr = %s, duration_ms = %s, time_finished = %s, run_at = %s,"
        " worker = NULL, time_claimed = 0, attempt_log = CONCAT(COALESCE(attempt_log, ''), %s)"
        " WHERE id = %s AND status = 'running' AND instance = %s"
    )
    select_held_retry = "SELECT id FROM {t} WHERE id = %s AND status = 'waiting' AND instance = %s"
    select_held = "SELECT id FROM {t} WHERE id IN ({ids}) AND instance = %s FOR UPDATE"
    # Also takes rows claimed straight to 'running' that never started.  MariaDB
    # assigns left to right: `attempts` must be set while `status` is still the old one.
    release = (
        "UPDATE {t} SET attempts = attempts - IF(status = 'running', 1, 0),"
        " status = IF(status = 'manual', 'manual', 'waiting'), worker = NULL, instance = NULL,"
        " time_claimed = 0 WHERE id IN ({ids}) AND status IN ('accepted', 'manual', 'running')"
        " AND instance = %s"
    )
    next_due = (
        "SELECT MIN(run_at) FROM {t}"
        " WHERE status = 'waiting' AND target IN ({targets}) AND run_at > %s"
    )
    record_callback = "UPDATE {t} SET callback_result = %s WHERE id = %s"
    release_unknown = (
        "UPDATE {t} SET attempts = attempts - IF(status = 'running', 1, 0),"
        " status = 'waiting', worker = NULL, instance = NULL, time_claimed = 0"
        " WHERE instance = %s AND status IN ('accepted', 'running') AND id NOT IN ({ids})"
    )


class SettleQueries:
    """Settling the rows of a worker instance that will not write them again: it died (a
    rescue), its worker started again (a restart), or an operator says so (`jobctl
    recover`).  `{held}` is one of HELD_BY.  Every row settled gets `instance` NULL."""

    reserved_targets = "SELECT DISTINCT target FROM {t} WHERE {held} AND status = 'accepted'"
    release_reserved = (
        "UPDATE {t} SET status = IF(status = 'accepted', 'waiting', status), worker = NULL,"
        " instance = NULL, time_claimed = 0 WHERE {held} AND status IN ('accepted', 'manual')"
    )
    select_running = (
        "SELECT id, target, attempts, rescues FROM {t} WHERE {held} AND status = 'running'"
        " FOR UPDATE"
    )
    retry = (
        "UPDATE {t} SET status = 'waiting', worker = NULL, instance = NULL, time_claimed = 0,"
        " run_at = NULL, rescues = rescues + 1,"
        " attempt_log = CONCAT(COALESCE(attempt_log, ''), %s)"
        " WHERE id = %s AND status = 'running' AND {held}"
    )
    fail = (
        "UPDATE {t} SET status = 'done', result = 'fail', time_finished = %s, instance = NULL,"
        " rescues = rescues + 1, stderr = CONCAT(COALESCE(stderr, ''), %s)"
        " WHERE id = %s AND status = 'running' AND {held}"
    )


#: The rows a settlement takes: one instance's (its id the parameter), or those a
#: worker's name claimed with no instance recorded, by an older jobd (its name).
HELD_BY = {"instance": "instance = %s", "name": "worker = %s AND instance IS NULL"}
