"""`jobctl top`: a live view of the queue for people who live in a terminal.

Every second (--interval) it reads the master's status with each worker's own status
(`poll_workers: true`; with --worker, that worker's status) and the jobs table, and
redraws, as top(1) does:

- a header: the daemon, how many workers are live, the time;
- per target: rows waiting, jobs running and the capacity (the workers' slots), jobs
  done ok and failed per minute over the last minute, and their median duration;
- the running jobs, longest running first (at most RUNNING_ROWS).

`--once` prints one frame and exits, for scripts and tests (with --json, the frame's
data).  The data of a frame is `snapshot()`, its drawing `render()`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import click

from jobctl.connection import (
    EXIT_ERROR,
    EXIT_NO_ANSWER,
    MASTER,
    TABLES,
    WORKER,
    Daemon,
    _jsonable,
)
from jobctl.queue import opened
from jobctl.render import duration
from jobd.api.sync import Jobd
from jobd.wire.client import NoAnswer, RequestError, call

if TYPE_CHECKING:  # rich is imported when a frame is drawn: other commands never load it
    from rich.console import RenderableType

#: Seconds of finished jobs the rates and the median are taken over.
WINDOW = 60
#: Running jobs listed at most.
RUNNING_ROWS = 20


def _daemon_status(daemon: Daemon) -> tuple[dict[str, Any] | None, str | None, int]:
    """(status reply, None, 0), or (None, what went wrong, the exit status it means:
    EXIT_NO_ANSWER or EXIT_ERROR)."""
    data = None if daemon.kind == WORKER else {"poll_workers": True}
    try:
        reply = call(daemon.address, "status", data, daemon.timeout, TABLES[daemon.kind],
                     daemon.curve)  # fmt: skip
    except NoAnswer as exc:
        return None, str(exc), EXIT_NO_ANSWER
    except RequestError as exc:
        return None, f"{exc.message} ({exc.code})", EXIT_ERROR
    return reply, None, 0


def _workers(daemon: Daemon, status: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{worker: {"targets": {target: {slot: concurrency}}, "status": its status or None,
    "error": why it did not answer or None}} of the live workers."""
    if status is None:
        return {}
    if daemon.kind == WORKER:
        slots = {t: {s: v["concurrency"] for s, v in e["slots"].items()}
                 for t, e in status["targets"].items()}  # fmt: skip
        return {status["name"]: {"targets": slots, "status": status, "error": None}}
    return {
        name: {"targets": w["targets"], "status": w.get("status"), "error": w.get("error")}
        for name, w in sorted(status["workers"].items())
    }


def _slot_counts(workers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """{target: {"running", "queued", "capacity"}} summed over the workers and slots: a
    worker's own status where it answered, else the slots it registered with."""
    out: dict[str, dict[str, int]] = {}
    for worker in workers.values():
        own = worker["status"]
        if own is not None:
            served = {t: e["slots"] for t, e in own["targets"].items()}
        else:
            served = {t: {s: {"concurrency": n} for s, n in slots.items()}
                      for t, slots in worker["targets"].items()}  # fmt: skip
        for target, slots in served.items():
            entry = out.setdefault(target, {"running": 0, "queued": 0, "capacity": 0})
            for slot in slots.values():
                entry["capacity"] += int(slot["concurrency"])
                entry["running"] += int(slot.get("running", 0))
                entry["queued"] += int(slot.get("queued", 0))
    return out


def _running_jobs(
    jobd: Jobd, daemon: Daemon, workers: Mapping[str, Mapping[str, Any]], now: float
) -> tuple[int, list[dict[str, Any]]]:
    """(how many jobs run, the RUNNING_ROWS longest running): the ids the workers say
    they run, and the rows in status running (of the worker, with --worker)."""
    reported = {
        job_id: name
        for name, w in workers.items()
        if w["status"] is not None
        for job_id in w["status"]["running"]
    }
    rows = {r["id"]: r for r in jobd.jobs(status="running", limit=1000)}
    if daemon.kind == WORKER:
        rows = {i: r for i, r in rows.items() if r["worker"] in workers or i in reported}
    for job_id in sorted(set(reported) - set(rows))[:RUNNING_ROWS]:
        row = jobd.job(job_id)  # claimed, its start not written yet
        if row is not None:
            rows[job_id] = row
    entries = []
    for job_id in set(reported) | set(rows):
        row = rows.get(job_id, {})
        started = row.get("time_started") or None
        entries.append({
            "id": job_id,
            "target": row.get("target"),
            "slot": row.get("slot") or "default",
            "worker": row.get("worker") or reported.get(job_id),
            "running_for": None if started is None else max(0, int(now - started)),
        })  # fmt: skip
    entries.sort(key=lambda e: (-(e["running_for"] or 0), e["id"]))
    return len(entries), entries[:RUNNING_ROWS]


def _per_minute(count: int) -> float:
    return round(count * 60 / WINDOW, 1)


def snapshot(jobd: Jobd, daemon: Daemon) -> dict[str, Any]:
    """The data of one frame:

        {"time", "daemon": {"kind", "address", "name", "error", "exit_status"},
         "workers": {"live", "not_answering": {worker: error}},
         "targets": [{"target", "waiting", "running", "queued",
                      "capacity", "done_per_min", "failed_per_min", "p50"}],
         "running": {"count", "jobs": [{"id", "target", "slot", "worker", "running_for"}]}}

    `error` is why the daemon gave no status (the table's data is there all the same),
    `exit_status` what `--once` then exits with (0 when it answered);
    rates are jobs per minute over the last WINDOW seconds, p50 their median duration in
    seconds; running_for is whole seconds since the row's time_started."""
    now = time.time()
    status, error, exit_status = _daemon_status(daemon)
    workers = _workers(daemon, status)
    counts = _slot_counts(workers)
    stats = {s.target: s for s in jobd.stats(since=now - WINDOW)}
    waiting = {q.target: q.waiting for q in jobd.queue()}  # one grouped query
    targets = []
    for target in sorted(set(counts) | set(stats) | set(waiting)):
        slots = counts.get(target, {"running": 0, "queued": 0, "capacity": 0})
        recent = stats.get(target)
        targets.append({
            "target": target, "waiting": waiting.get(target, 0), **slots,
            "done_per_min": _per_minute(recent.ok if recent else 0),
            "failed_per_min": _per_minute(recent.failed if recent else 0),
            "p50": recent.p50 if recent else None,
        })  # fmt: skip
    count, running = _running_jobs(jobd, daemon, workers, now)
    return {
        "time": round(now, 3),
        "daemon": {
            "kind": daemon.kind,
            "address": daemon.address,
            "name": None if status is None else status.get("name"),
            "error": error,
            "exit_status": exit_status,
        },
        "workers": {
            "live": len(workers),
            "not_answering": {n: w["error"] for n, w in workers.items() if w["error"]},
        },
        "targets": targets,
        "running": {"count": count, "jobs": running},
    }


def _header(snap: Mapping[str, Any]) -> str:
    d, w = snap["daemon"], snap["workers"]
    who = f"jobd-master {d['address']}" if d["kind"] == MASTER else f"worker {d['address']}"
    if d["kind"] == WORKER and d["name"]:
        who = f"worker {d['name']} {d['address']}"
    parts = [who, f"{w['live']} live worker{'' if w['live'] == 1 else 's'}"]
    if w["not_answering"]:
        parts.append(f"{len(w['not_answering'])} not answering")
    parts.append(time.strftime("%H:%M:%S", time.localtime(snap["time"])))
    line = " · ".join(parts)
    return line + (f"\nno status: {d['error']}" if d["error"] else "")


def _number(value: float) -> str:
    return f"{value:g}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def render(snap: Mapping[str, Any]) -> RenderableType:
    """One frame of `snapshot()`: the header, the targets and the running jobs."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    targets = Table(title="targets", title_justify="left", expand=False)
    for name in ("TARGET", "WAITING", "RUNNING", "CAPACITY", "DONE/MIN", "FAILED/MIN", "P50"):
        targets.add_column(name, justify="left" if name == "TARGET" else "right")
    for t in snap["targets"]:
        waiting = str(t["waiting"])
        targets.add_row(
            t["target"], waiting, str(t["running"]), str(t["capacity"]),
            _number(t["done_per_min"]), _number(t["failed_per_min"]), _seconds(t["p50"]),
        )  # fmt: skip
    running = snap["running"]
    shown = len(running["jobs"])
    more = f" ({shown} of {running['count']} shown)" if shown < running["count"] else ""
    jobs = Table(title=f"running jobs: {running['count']}{more}", title_justify="left")
    for name in ("ID", "TARGET", "SLOT", "WORKER", "RUNNING FOR"):
        jobs.add_column(name, justify="right" if name in ("ID", "RUNNING FOR") else "left")
    for j in running["jobs"]:
        cells: Iterable[Any] = (j["id"], j["target"], j["slot"], j["worker"])
        since = "-" if j["running_for"] is None else duration(j["running_for"])
        jobs.add_row(*("-" if c is None else str(c) for c in cells), since)
    return Group(Text(_header(snap)), targets, jobs)


@click.command()
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
    metavar="SECONDS", help="Seconds between two frames.",
)  # fmt: skip
@click.option("--once", is_flag=True, help="Print one frame and exit (with --json: its data).")
@click.pass_obj
def top(daemon: Daemon, interval: float, once: bool) -> None:
    """A live view of the queue: targets, rates and running jobs.

    Per target: WAITING rows (delayed ones too), RUNNING jobs and
    the CAPACITY of the workers' slots, jobs done ok and failed per minute over the last
    minute and their P50 duration; then the running jobs, longest running first.  Reads
    the master's status with each worker's (or --worker's) and the jobs table.  Ctrl-C
    quits.  With --once, the exit status is 3 (1) when the daemon did not answer (answered
    with an error)."""
    if daemon.json and not once:
        raise click.UsageError("--json needs --once")
    try:
        with opened(daemon) as jobd:
            if once:
                _once(jobd, daemon)
            else:
                _live(jobd, daemon, interval)
    except KeyboardInterrupt:
        return


def _once(jobd: Jobd, daemon: Daemon) -> None:
    snap = snapshot(jobd, daemon)
    if daemon.json:
        click.echo(json.dumps(_jsonable(snap), indent=2, sort_keys=True))
    else:
        from rich.console import Console

        Console(highlight=False, soft_wrap=False).print(render(snap))
    if snap["daemon"]["exit_status"]:
        raise SystemExit(snap["daemon"]["exit_status"])


def _live(jobd: Jobd, daemon: Daemon, interval: float) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console(highlight=False)
    with Live(render(snapshot(jobd, daemon)), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(max(0.0, interval))
            live.update(render(snapshot(jobd, daemon)), refresh=True)
