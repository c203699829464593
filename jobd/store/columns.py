"""The statuses and columns of a jobs row, as clients read them."""

from __future__ import annotations

#: Statuses of a row that will not change any more.
FINISHED = ("done", "ignored")
STATUSES = ("waiting", "manual", "accepted", "running", "done", "ignored")

JOB_COLUMNS = (
    "id", "target", "slot", "status", "priority", "result", "return_code", "sig",
    "time_created", "run_at", "time_claimed", "time_started", "time_finished", "duration_ms",
    "attempts", "worker", "instance", "rescues", "schedule_id", "scheduled_at", "retry_of",
    "callback_url", "callback_result", "data", "attempt_log", "stdout", "stderr",
)  # fmt: skip
#: What a listing shows: no output, no data.
SUMMARY_COLUMNS = JOB_COLUMNS[: JOB_COLUMNS.index("callback_url")]
