"""`jobctl workers`: the worker instances of the workers table, running ones first, with
the age of their last heartbeat (the database's clock), their lease and the jobs they
hold.  Needs the database, not the master: it shows instances the master never saw."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from jobctl.connection import Daemon
from jobctl.queue import opened
from jobctl.render import clock, table


@click.command()
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.pass_obj
def workers(daemon: Daemon, limit: int) -> None:
    """Worker instances from the workers table, running ones first.

    STATE is running, stopped (a graceful end) or rescued (its rows were settled by a
    rescuer, a restart or jobctl recover); a running instance whose heartbeat is older
    than its lease is shown as "dead" until a rescuer settles it."""
    with opened(daemon) as jobd:
        entries = jobd.workers(limit)
    daemon.show(entries, render)


def state(entry: Mapping[str, Any]) -> str:
    if entry["state"] == "running" and entry["age"] > entry["lease"]:
        return "dead"
    return str(entry["state"])


def render(entries: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (
            e["name"],
            e["host"],
            e["pid"],
            state(e),
            f"{e['age']:.1f} s",
            f"{e['lease']:g} s",
            e["held"],
            clock(int(e["started"])),
            e["instance"],
            e["rescued_by"] or "-",
        )
        for e in entries
    ]
    header = ["NAME", "HOST", "PID", "STATE", "HEARTBEAT", "LEASE", "JOBS", "STARTED",
              "INSTANCE", "RESCUED BY"]  # fmt: skip
    return table(header, rows) or "no worker instances"
