"""`jobctl schedule add | list | show | remove | enable | disable | run-now`: recurring
schedules, thin over jobd.client's job API.  The master (and workers with
`scheduler: true`) fire them; these commands only edit the schedules table."""

from __future__ import annotations

from typing import Any

import click

from jobctl import render_jobs
from jobctl.connection import EXIT_ERROR, Daemon, fail
from jobctl.queue import _data, opened
from jobctl.times import parse_duration
from jobd.cron import CATCH_UP_POLICIES
from jobd.store.schedules import Schedule


@click.group()
def schedule() -> None:
    """Recurring schedules (fired by jobd-master and workers with scheduler: true)."""


def _show(daemon: Daemon, entry: Schedule | None, name: str) -> None:
    if entry is None:
        fail(f"no such schedule: {name}", EXIT_ERROR)
    assert entry is not None
    daemon.show(entry.as_dict() if daemon.json else entry, render_jobs.schedule)


@schedule.command("add")
@click.argument("name")
@click.argument("target")
@click.option("--cron", default=None, metavar="EXPR", help="'*/5 * * * *' (6th field: seconds).")
@click.option("--every", default=None, metavar="DURATION", help="A fixed interval: 90s, 15m...")
@click.option("--timezone", default="UTC", show_default=True, help="Of the cron expression.")
@click.option("--slot", default=None, help="The jobs' slot.")
@click.option("--priority", type=int, default=0, show_default=True)
@click.option("--data", default=None, metavar="JSON", help="The jobs' data (launcher's stdin).")
@click.option("--data-file", default=None, metavar="FILE", help="--data from a file (- stdin).")
@click.option(
    "--catch-up", type=click.Choice(CATCH_UP_POLICIES), default="once", show_default=True,
    help="After downtime: one job for the missed fire times, or none.",
)  # fmt: skip
@click.option("--disabled", is_flag=True, help="Add it disabled.")
@click.pass_obj
def add(
    daemon: Daemon, name: str, target: str, cron: str | None, every: str | None,
    timezone: str, slot: str | None, priority: int, data: str | None,
    data_file: str | None, catch_up: str, disabled: bool,
) -> None:  # fmt: skip
    """Add schedule NAME: a job of TARGET at each fire time (--cron or --every)."""
    if (cron is None) == (every is None):
        raise click.UsageError("give --cron EXPR or --every DURATION")
    interval = None
    if every is not None:
        seconds = parse_duration(every, "--every", bare_seconds=True)
        if seconds != int(seconds) or seconds < 1:
            raise click.UsageError("--every: whole seconds, at least 1")
        interval = int(seconds)
    options: dict[str, Any] = {
        "cron": cron, "interval": interval, "timezone": timezone, "slot": slot,
        "priority": priority, "data": _data(data, data_file), "catch_up": catch_up,
        "enabled": not disabled,
    }  # fmt: skip
    with opened(daemon) as jobd:
        if jobd.get_schedule(name) is not None:
            fail(f"schedule {name} exists already", EXIT_ERROR)
        try:
            entry = jobd.schedule(name, target, **options)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    _show(daemon, entry, name)


@schedule.command("list")
@click.pass_obj
def list_(daemon: Daemon) -> None:
    """Every schedule, with its last and next fire time."""
    with opened(daemon) as jobd:
        entries = jobd.schedules()
    daemon.show([e.as_dict() for e in entries] if daemon.json else entries, render_jobs.schedules)


@schedule.command()
@click.argument("name")
@click.pass_obj
def show(daemon: Daemon, name: str) -> None:
    """Every field of schedule NAME."""
    with opened(daemon) as jobd:
        entry = jobd.get_schedule(name)
    _show(daemon, entry, name)


@schedule.command()
@click.argument("name")
@click.pass_obj
def remove(daemon: Daemon, name: str) -> None:
    """Remove schedule NAME (the jobs it made stay)."""
    with opened(daemon) as jobd:
        removed = jobd.remove_schedule(name)
    if not removed:
        fail(f"no such schedule: {name}", EXIT_ERROR)
    daemon.show({"removed": name}, lambda r: f"schedule {name} removed")


def _set_enabled(daemon: Daemon, name: str, enabled: bool) -> None:
    with opened(daemon) as jobd:
        entry = jobd.enable_schedule(name, enabled)
    _show(daemon, entry, name)


@schedule.command()
@click.argument("name")
@click.pass_obj
def enable(daemon: Daemon, name: str) -> None:
    """Enable schedule NAME, from its next fire time on (no catch-up)."""
    _set_enabled(daemon, name, True)


@schedule.command()
@click.argument("name")
@click.pass_obj
def disable(daemon: Daemon, name: str) -> None:
    """Disable schedule NAME."""
    _set_enabled(daemon, name, False)


@schedule.command("run-now")
@click.argument("name")
@click.pass_obj
def run_now(daemon: Daemon, name: str) -> None:
    """One job of schedule NAME now; print its id.  Its fire times stay as they are."""
    with opened(daemon) as jobd:
        try:
            job_id = jobd.run_schedule_now(name)
        except LookupError:
            fail(f"no such schedule: {name}", EXIT_ERROR)
    if job_id is None:
        fail(f"schedule {name} has a job for this second already", EXIT_ERROR)
    daemon.show({"id": job_id}, lambda r: str(r["id"]))
