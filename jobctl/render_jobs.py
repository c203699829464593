"""Human output of the table commands (add, wait, jobs, show, stats, targets, purge,
schedule): aligned tables like the rest of jobctl (jobctl.render)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jobctl.render import clock, key_values, lines, table
from jobd.jobs import ran, waited
from jobd.store.catalog import TargetStats
from jobd.store.schedules import Schedule


def _when(timestamp: int | None) -> str:
    return clock(timestamp) if timestamp else "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _job_duration(row: Mapping[str, Any]) -> str:
    """How long the row's last start ran (milliseconds where the row has them)."""
    if row.get("status") not in ("done", "ignored"):
        return "-"
    return _seconds(ran(row))


def outcome_line(outcome: Mapping[str, Any]) -> str:
    """One finished job, for `jobctl wait` on a pipe: `job 41: ok (code 0, 1 s)`."""
    head = f"job {outcome['id']}: "
    if outcome["status"] == "ignored":
        return head + "ignored (no such slot on the worker)"
    if outcome["signal"]:
        how = outcome["signal"]
    elif outcome["code"] is None:
        how = "could not start"
    else:
        how = f"code {outcome['code']}"
    return head + f"{outcome['result']} ({how}, {_seconds(outcome['duration'])})"


def wait_summary(outcomes: Mapping[int, Mapping[str, Any]], pending: Sequence[int]) -> str:
    """After the progress bar: counts, and a table of the jobs that did not end ok."""
    ok = sum(o["result"] == "ok" for o in outcomes.values())
    head = f"{len(outcomes)} jobs finished: {ok} ok, {len(outcomes) - ok} not ok"
    if pending:
        head += f"; {len(pending)} not finished: {' '.join(map(str, pending[:20]))}"
    rows = [
        (i, o["status"], o["result"], o["code"], o["signal"], _seconds(o["duration"]))
        for i, o in sorted(outcomes.items())
        if o["result"] != "ok"
    ]
    return lines(head, table(["ID", "STATUS", "RESULT", "CODE", "SIGNAL", "DURATION"], rows))


def jobs(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ["ID", "TARGET", "SLOT", "STATUS", "RESULT", "CODE", "SIGNAL", "PRIORITY",
              "CREATED", "DURATION", "WORKER"]  # fmt: skip
    return table(header, map(_job_row, rows)) or "no jobs"


def _job_row(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        r["id"], r["target"], r["slot"] or "default", r["status"], r["result"],
        r["return_code"], r["sig"], r["priority"], _when(r["time_created"]),
        _job_duration(r), r["worker"],
    )  # fmt: skip


_TIMES = ("time_created", "run_at", "time_claimed", "time_started", "time_finished",
          "scheduled_at")  # fmt: skip
_TEXTS = ("data", "attempt_log", "stdout", "stderr")


def job(row: Mapping[str, Any]) -> str:
    """Every column: the short ones as key: value, the long ones as indented blocks."""
    fields: dict[str, Any] = {}
    for name, value in row.items():
        if name in _TEXTS:
            continue
        if name in _TIMES and value:
            value = f"{clock(value)} ({value})"
        fields[name] = value
    fields["duration"] = _job_duration(row)
    fields["waited"] = _seconds(waited(row))
    blocks = []
    for name in _TEXTS:
        text = row.get(name)
        if name == "data" and text:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        if text:
            blocks.append(f"{name}:\n    " + text.rstrip("\n").replace("\n", "\n    "))
        else:
            blocks.append(f"{name}: -")
    return lines(key_values(fields), "\n".join(blocks))


def stats(entries: Sequence[TargetStats]) -> str:
    header = ["TARGET", "RUNS", "OK", "FAILED", "IGNORED", "RETRIED", "MEAN", "P50", "P95",
              "WAITED", "WAITED P95"]  # fmt: skip
    return table(header, map(_stats_row, entries)) or "no finished jobs"


def _stats_row(s: TargetStats) -> tuple[Any, ...]:
    mean = "-" if s.mean is None else f"{s.mean:.3f} s"
    waited_mean = "-" if s.wait_mean is None else f"{s.wait_mean:.1f} s"
    counts = (s.runs, s.ok, s.failed, s.ignored, s.retried)
    return (s.target, *counts, mean, _seconds(s.p50), _seconds(s.p95), waited_mean,
            _seconds(s.wait_p95))  # fmt: skip


def targets(entries: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for target, entry in entries.items():
        workers = " ".join(
            f"{name}:{_slots(slots)}" for name, slots in sorted(entry["workers"].items())
        )
        rows.append((target, entry["description"], workers))
    return table(["TARGET", "DESCRIPTION", "WORKERS"], rows) or "no targets"


def _slots(slots: Mapping[str, int]) -> str:
    if list(slots) == ["default"]:
        return str(slots["default"])
    return ",".join(f"{slot}={n}" for slot, n in slots.items())


def _rule(schedule: Schedule) -> str:
    return f"cron {schedule.cron}" if schedule.cron else f"every {schedule.interval} s"


def schedules(entries: Sequence[Schedule]) -> str:
    header = ["NAME", "TARGET", "RULE", "TIMEZONE", "ENABLED", "CATCH UP", "LAST FIRE",
              "NEXT FIRE"]  # fmt: skip
    return table(header, map(_schedule_row, entries)) or "no schedules"


def _schedule_row(s: Schedule) -> tuple[Any, ...]:
    next_fire = _when(s.next_fire) if s.enabled else "-"
    return (s.name, s.target, _rule(s), s.timezone, s.enabled, s.catch_up,
            _when(s.last_fire), next_fire)  # fmt: skip


def schedule(entry: Schedule) -> str:
    fields = entry.as_dict()
    fields["rule"] = _rule(entry)
    for name in ("last_fire", "next_fire"):
        if fields[name]:
            fields[name] = f"{clock(fields[name])} ({fields[name]})"
    return key_values(fields)
