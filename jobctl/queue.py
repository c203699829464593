"""jobctl's commands on the jobs table: add, wait, jobs, show, stats, targets, purge.

They are thin over jobd.client's job API (`Jobd`): the SQL is in jobd.store.catalog,
the waiting in jobd.api.waiting.  The database comes from --database, JOBD_DATABASE_URL or
`database:` of ~/.jobctl.yaml; the daemon (--master, the default, or --worker) is
poked and relays the job events.

`add --wait` and `wait` exit with a status that mirrors the job's (EXIT_STATUSES).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from jobctl import render_jobs
from jobctl.connection import EXIT_ERROR, EXIT_NO_ANSWER, WORKER, Daemon, _jsonable, fail
from jobctl.times import parse_duration, parse_since, parse_time
from jobd.api.replies import targets_from_status
from jobd.api.sync import Jobd
from jobd.api.waiting import JobNotFound, WaitTimeout
from jobd.store.columns import FINISHED, STATUSES
from jobd.store.pool import StorageError
from jobd.wire.client import NoAnswer, RequestError

#: Exit statuses of `add --wait` (and the worst job of `wait` for the first four).
EXIT_JOB_TIMEOUT = 124  # the job did not finish within --wait-timeout (as timeout(1))
EXIT_JOB_IGNORED = 125  # no worker had the job's slot: the row was ignored
EXIT_JOB_NOT_STARTED = 127  # the launcher could not start (as a shell's "not found")
EXIT_SIGNAL_BASE = 128  # killed by signal N: 128 + N (as a shell)


def job_exit_status(outcome: dict[str, Any]) -> int:
    """0 for ok; the job's exit code (1..255) for a failure; 128 + N for a job killed by
    signal N; 127 for a launcher that could not start; 125 for an ignored row."""
    if outcome["status"] == "ignored":
        return EXIT_JOB_IGNORED
    if outcome["result"] == "ok":
        return 0
    if outcome["signal"]:
        try:
            return EXIT_SIGNAL_BASE + signal.Signals[outcome["signal"]].value
        except KeyError:
            return EXIT_ERROR
    if outcome["code"] is None:
        return EXIT_JOB_NOT_STARTED
    return outcome["code"] or EXIT_ERROR  # a failure with code 0: stopped by jobd


@contextlib.contextmanager
def opened(daemon: Daemon) -> Iterator[Jobd]:
    """The job API on --database/--table and the chosen daemon; errors become jobctl's
    exit statuses (1 database or daemon error, 2 usage, 3 no answer)."""
    url = daemon.database_url()  # a usage error when there is none
    where = f"database {url.redacted()}, table {daemon.table}"
    role = {"worker": daemon.address} if daemon.kind == WORKER else {"master": daemon.address}
    try:
        jobd = Jobd(url, table=daemon.table, timeout=daemon.timeout, curve=daemon.curve, **role)
    except StorageError as exc:
        fail(f"{where}: {exc}", EXIT_ERROR)
    try:
        yield jobd
    except StorageError as exc:
        fail(f"{where}: {exc}", EXIT_ERROR)
    except NoAnswer as exc:
        fail(str(exc), EXIT_NO_ANSWER)
    except RequestError as exc:
        fail(f"{daemon.kind} {daemon.address}: {exc.message} ({exc.code})", EXIT_ERROR)
    except JobNotFound as exc:
        fail(str(exc), EXIT_ERROR)
    finally:
        jobd.close()


def _print_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), indent=2, sort_keys=True, ensure_ascii=False))


def _data(text: str | None, file: str | None) -> Any:
    """--data JSON or --data-file F (`-`: stdin), parsed, so bad JSON is a usage error."""
    if text is not None and file is not None:
        raise click.UsageError("give --data or --data-file, not both")
    if file is not None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.UsageError(f"--data-file: cannot read {file}: {exc.strerror}") from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"--data: not valid JSON: {exc}") from None


_WAIT_TIMEOUT = click.option(
    "--wait-timeout", type=float, default=None, metavar="SECONDS",
    help=f"Give up waiting after SECONDS (exit status {EXIT_JOB_TIMEOUT}); default: no limit.",
)  # fmt: skip


@click.command()
@click.argument("target")
@click.option("--slot", default=None, help="The slot (default: the slot 'default').")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher starts first.")
@click.option("--at", "at", default=None, metavar="TIME", help="Not before TIME (UNIX or ISO).")
@click.option("--in", "in_", default=None, metavar="DURATION", help="Not before 90s, 15m, 2h...")
@click.option("--data", default=None, metavar="JSON", help="JSON the launcher reads on stdin.")
@click.option("--data-file", default=None, metavar="FILE", help="--data from a file (- stdin).")
@click.option("--manual", is_flag=True, help="Run only when asked for (jobctl run-manual).")
@click.option("--callback-url", default=None, metavar="URL", help="POSTed the outcome.")
@click.option("--wait", is_flag=True, help="Wait; print the outcome; exit like the job.")
@_WAIT_TIMEOUT
@click.pass_obj
def add(
    daemon: Daemon, target: str, slot: str | None, priority: int, at: str | None,
    in_: str | None, data: str | None, data_file: str | None, manual: bool,
    callback_url: str | None, wait: bool, wait_timeout: float | None,
) -> None:  # fmt: skip
    """Add a job of TARGET; print its id.

    The row is inserted, then the master (or --worker) is poked.  With --wait, print
    the outcome as JSON ({id, status, result, code, signal, stdout, stderr, duration,
    waited})
    and exit with 0 for ok, the job's exit code for a failure, 128+N for a job killed
    by signal N, 127 when the launcher could not start, 125 for an ignored row and 124
    when --wait-timeout passed first."""
    if at is not None and in_ is not None:
        raise click.UsageError("give --at or --in, not both")
    options: dict[str, Any] = {
        "slot": slot, "priority": priority, "data": _data(data, data_file),
        "manual": manual, "callback_url": callback_url,
        "at": None if at is None else parse_time(at, "--at"),
        "delay": None if in_ is None else parse_duration(in_, "--in", bare_seconds=True),
    }  # fmt: skip
    with opened(daemon) as jobd:
        try:
            job_id = jobd.submit(target, **options)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if not wait:
            if daemon.json:
                _print_json({"id": job_id})
            else:
                click.echo(job_id)
            return
        try:
            outcome = jobd.wait(job_id, wait_timeout)
        except WaitTimeout:
            _print_json({"id": job_id, "status": "unfinished"})
            fail(f"job {job_id} did not finish within {wait_timeout:g} s", EXIT_JOB_TIMEOUT)
    keys = ("id", "status", "result", "code", "signal", "stdout", "stderr", "duration", "waited")
    _print_json({key: outcome[key] for key in keys})
    raise SystemExit(job_exit_status(outcome))


@click.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@_WAIT_TIMEOUT
@click.pass_obj
def wait(daemon: Daemon, ids: tuple[int, ...], wait_timeout: float | None) -> None:
    """Wait until jobs IDS have finished.

    On a terminal, a progress bar and then the jobs that did not end ok; otherwise one
    line per job as it finishes.  Exit status 0 when all ended ok, 1 otherwise, 124 when
    --wait-timeout passed first."""
    unique = list(dict.fromkeys(ids))
    bar_wanted = not daemon.json and sys.stdout.isatty()
    pending: list[int] = []
    with opened(daemon) as jobd:
        if bar_wanted:
            with click.progressbar(length=len(unique), label=f"{len(unique)} jobs") as bar:
                outcomes, pending = _wait(jobd, unique, wait_timeout, lambda _: bar.update(1))
            click.echo(render_jobs.wait_summary(outcomes, pending))
        else:
            quiet = daemon.json

            def line(outcome: dict[str, Any]) -> None:
                if not quiet:
                    click.echo(render_jobs.outcome_line(outcome))

            outcomes, pending = _wait(jobd, unique, wait_timeout, line)
            if daemon.json:
                _print_json({"jobs": outcomes, "unfinished": pending})
            elif pending:
                click.echo(f"not finished: {' '.join(map(str, pending))}")
    if pending:
        raise SystemExit(EXIT_JOB_TIMEOUT)
    if any(o["result"] != "ok" for o in outcomes.values()):
        raise SystemExit(EXIT_ERROR)


def _wait(
    jobd: Jobd, ids: Sequence[int], timeout: float | None, on_finished: Any
) -> tuple[dict[int, Any], list[int]]:
    try:
        return jobd.wait_many(ids, timeout, on_finished), []
    except WaitTimeout as exc:
        return exc.done, exc.pending


@click.command()
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only this status.")
@click.option("--target", default=None, help="Only this target.")
@click.option("--since", default=None, metavar="WHEN", help="Created since 1h, 7d, or a time.")
@click.option("--text", default=None, help="Only jobs with TEXT in their data or output.")
@click.option("--before", type=click.IntRange(1), default=None, metavar="ID", help="Ids below ID.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.pass_obj
def jobs(
    daemon: Daemon,
    status: str | None,
    target: str | None,
    since: str | None,
    text: str | None,
    before: int | None,
    limit: int,
) -> None:
    """List jobs, newest first.  A search by --since or --text reads a window of ids at a
    time: when it stops short, it says where to go on with --before."""
    when = None if since is None else parse_since(since, "--since")
    with opened(daemon) as jobd:
        page = jobd.jobs_page(
            status=status, target=target, since=when, text=text, before=before, limit=limit
        )
    daemon.show(page.rows, render_jobs.jobs)
    if page.searched_down_to:
        click.echo(
            f"searched down to id {page.searched_down_to}: --before"
            f" {page.searched_down_to} searches older jobs",
            err=True,
        )


@click.command()
@click.argument("job_id", metavar="ID", type=int)
@click.pass_obj
def show(daemon: Daemon, job_id: int) -> None:
    """Every field of job ID, with its data and output."""
    with opened(daemon) as jobd:
        row = jobd.job(job_id)
    if row is None:
        fail(f"no such job: {job_id}", EXIT_ERROR)
    daemon.show(row, render_jobs.job)


@click.command()
@click.option("--target", default=None, help="Only this target.")
@click.option("--since", default=None, metavar="WHEN", help="Finished since 1h, 7d, or a time.")
@click.pass_obj
def stats(daemon: Daemon, target: str | None, since: str | None) -> None:
    """Per target: runs, ok, failed, ignored, retried, durations and waits.

    Over the rows finished since WHEN (default: all).  runs = ok + failed; retried:
    done rows started more than once; durations (mean, p50, p95) are the worker's own
    measure in milliseconds (whole seconds for rows from before it), p50/p95 by nearest
    rank to three significant digits; waited: seconds from created to claimed."""
    when = 0.0 if since is None else parse_since(since, "--since")
    with opened(daemon) as jobd:
        entries = jobd.stats(target=target, since=when)
    daemon.show([e.as_dict() for e in entries] if daemon.json else entries, render_jobs.stats)


@click.command()
@click.pass_obj
def targets(daemon: Daemon) -> None:
    """Targets with their description and workers.

    Through the master, every target of the live workers; with --worker, that worker's.
    Needs no database."""
    reply = daemon.request("status", None if daemon.kind == WORKER else {"poll_workers": False})
    entries = targets_from_status(reply, from_worker=daemon.kind == WORKER)
    daemon.show(entries, render_jobs.targets)


@click.command()
@click.option(
    "--older-than", required=True, metavar="DURATION",
    help="Rows that finished longer ago than this: 30d, 12h...",
)  # fmt: skip
@click.option(
    "--status", "statuses", type=click.Choice(FINISHED), multiple=True,
    help="Only rows of this status (repeatable; default: done and ignored).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Count, delete nothing.")
@click.pass_obj
def purge(daemon: Daemon, older_than: str, statuses: tuple[str, ...], dry_run: bool) -> None:
    """Delete finished rows older than --older-than.

    In batches of 1,000 rows, each its own short transaction, so a purge never holds
    long locks.  Only done and ignored rows go; the daemons never delete a row."""
    seconds = parse_duration(older_than, "--older-than")
    with opened(daemon) as jobd:
        count = jobd.purge(seconds, statuses=statuses or FINISHED, dry_run=dry_run)
    reply = {"deleted": 0 if dry_run else count, "matching": count, "dry_run": dry_run}
    verb = "would delete" if dry_run else "deleted"
    daemon.show(reply, lambda r: f"{verb} {count} rows finished more than {older_than} ago")
