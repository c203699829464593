"""`jobctl recover WORKER`: settle the rows of a worker that will not come back, at
once (a rescuer does the same by itself once the worker's lease has run out).

The rules are the worker's own restart's (jobd.worker.restart): accepted rows go back to
waiting, reserved manual rows back to manual, running rows back to waiting when they
have starts left (the max_attempts each instance recorded of its targets, or
`--max-attempts` for all of them), else done/fail with "worker NAME stopped while the
job was running" in stderr; the worker's running instances are marked rescued.

A live worker settles its own rows, and two parties settling the same rows would run
jobs twice; so the command refuses while the master has the worker in its registry, when
the master cannot be asked, and while an instance of the worker still holds its lease,
unless --force.
"""

from __future__ import annotations

import time
from typing import Any

import click

from jobctl.connection import EXIT_ERROR, EXIT_NO_ANSWER, MASTER, Daemon, fail
from jobctl.queue import opened
from jobd.api.instances import LeaseHeld
from jobd.names import WORKER_NAME_PATTERN
from jobd.store.settle import Settled
from jobd.wire.client import NoAnswer, RequestError, call
from jobd.wire.protocol import MASTER_REQUESTS


@click.command()
@click.argument("worker")
@click.option(
    "--force", is_flag=True,
    help="Do not ask whether WORKER is alive, by the master or by its lease (you know it is "
    "stopped for good).",
)  # fmt: skip
@click.option(
    "--max-attempts", type=click.IntRange(1, 1000), default=None,
    help="Starts a running job may have had and still go back to waiting, for every target "
    "(default: each target's max_attempts as the worker recorded it; 1 for rows claimed by "
    "a jobd older than the workers table).",
)  # fmt: skip
@click.pass_obj
def recover(daemon: Daemon, worker: str, force: bool, max_attempts: int | None) -> None:
    """Settle the rows of WORKER, which will not come back.

    Does what the worker does itself when it starts again: its accepted rows go back
    to waiting, its reserved manual rows to manual, its running rows to waiting while
    they have starts left (see --max-attempts), else to done/fail with the reason in
    stderr.  Refuses while WORKER is alive in the master's registry, when the master
    cannot be asked, or while an instance of WORKER still holds its lease (its heartbeat
    is younger than its lease), unless --force.  The database comes from --database,
    JOBD_DATABASE_URL or the defaults file.  A worker that never registers with this
    master cannot be seen alive: make sure it is stopped."""
    daemon.require(MASTER, "recover", "it asks the master whether the worker is alive")
    if not WORKER_NAME_PATTERN.fullmatch(worker):
        raise click.UsageError(f"not a worker name: {worker!r:.80}")
    daemon.database_url()  # a usage error before anything else is done
    if not force:
        _refuse_if_alive(daemon, worker)
    with opened(daemon) as jobd:
        try:
            recovery = jobd.recover_worker(worker, max_attempts=max_attempts, force=force)
        except LeaseHeld as exc:
            fail(f"{exc}; stop it first, or use --force", EXIT_ERROR)
    if not force and (recovery.released or recovery.retried):
        _poke(daemon)
    _show(daemon, worker, recovery)


def _refuse_if_alive(daemon: Daemon, worker: str) -> None:
    try:
        reply = call(
            daemon.address, "status", {"poll_workers": False}, daemon.timeout,
            MASTER_REQUESTS, daemon.curve,
        )  # fmt: skip
    except NoAnswer as exc:
        fail(
            f"cannot ask the master whether worker {worker} is alive: {exc}; "
            f"use --force if {worker} is stopped for good",
            EXIT_NO_ANSWER,
        )
    except RequestError as exc:
        fail(
            f"cannot ask the master whether worker {worker} is alive: {exc.message} "
            f"({exc.code}); use --force if {worker} is stopped for good",
            EXIT_ERROR,
        )
    entry = reply.get("workers", {}).get(worker)
    if entry is not None:
        seen = time.time() - float(entry.get("last_seen", time.time()))
        fail(
            f"worker {worker} is alive in the master's registry (connection "
            f"{entry.get('connection')}, last seen {max(seen, 0):.1f} s ago): it settles its "
            "own rows when it restarts; stop it first, or use --force",
            EXIT_ERROR,
        )


def _poke(daemon: Daemon) -> None:
    """Rows are waiting again: have every worker poll now rather than at its next safety
    poll.  Best effort: the rows are settled either way."""
    try:
        call(daemon.address, "poke", {}, daemon.timeout, MASTER_REQUESTS, daemon.curve)
    except (NoAnswer, RequestError) as exc:
        click.echo(f"jobctl: rows recovered, but the poke failed: {exc}", err=True)


def _show(daemon: Daemon, worker: str, recovery: Settled) -> None:
    data: dict[str, Any] = {
        "worker": worker,
        "released": recovery.released,
        "retried": sorted(recovery.retried),
        "failed": sorted(recovery.failed),
    }
    daemon.show(data, _render)


def _render(data: dict[str, Any]) -> str:
    def ids(values: list[int]) -> str:
        return ", ".join(map(str, values)) or "none"

    return "\n".join(
        [
            f"worker {data['worker']}:",
            f"  queued rows given back (waiting, or manual): {data['released']}",
            f"  running rows back to waiting (starts left):  {ids(data['retried'])}",
            f"  running rows failed (no starts left):        {ids(data['failed'])}",
        ]
    )
