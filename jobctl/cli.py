"""`jobctl`: talk to jobd-master (the default) or to one jobd worker.

    jobctl poke mail                     # master: the workers serving mail poll
    jobctl --worker status               # a worker on tcp://127.0.0.1:7080
    jobctl --worker tcp://web-2:7080 pause video
    jobctl --json --master tcp://10.0.0.5:7081 list-workers

Requests are validated with the protocol's own tables (jobd.wire.protocol) before they are
sent, and sent with jobd.client: jobctl has no second copy of either.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import click

from jobctl import render, settings
from jobctl.connection import MASTER, WORKER, Daemon
from jobctl.dashboard_user import dashboard_user
from jobctl.keygen import keygen
from jobctl.queue import add, jobs, opened, purge, show, stats, targets, wait
from jobctl.recover import recover
from jobctl.schedule import schedule
from jobctl.top import top
from jobctl.workers import workers
from jobd import __version__
from jobd.config import DATABASE_URL_ENV

#: `--master`/`--worker` given without an address.
_DEFAULT_ADDRESS = ""
_DAEMON_OPTIONS = ("--master", "--worker")


class JobctlGroup(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize_args(args, self.commands))


def normalize_args(args: Sequence[str], commands: Iterable[str]) -> list[str]:
    """`--master status` means the default master, not a master at "status": click would
    take any next word as the option's value, so a command name (or an option, or
    nothing) after --master/--worker leaves the address out."""
    out: list[str] = []
    args = list(args)
    commands = set(commands)
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        following = args[i + 1] if i + 1 < len(args) else None
        if arg in _DAEMON_OPTIONS and (
            following is None or following in commands or following.startswith("-")
        ):
            out.append(f"{arg}={_DEFAULT_ADDRESS}")
        else:
            out.append(arg)
    return out


@click.group(cls=JobctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--master", metavar="[ADDR]", is_flag=False, flag_value=_DEFAULT_ADDRESS, default=None,
    help="Talk to jobd-master (the default), at ADDR or the configured address.",
)  # fmt: skip
@click.option(
    "--worker", metavar="[ADDR]", is_flag=False, flag_value=_DEFAULT_ADDRESS, default=None,
    help="Talk to a jobd worker, at ADDR or the configured address.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.option(
    "--timeout", type=float, default=None, metavar="SECONDS",
    help=f"Seconds to wait for an answer (default {settings.DEFAULT_TIMEOUT:g}).",
)  # fmt: skip
@click.option(
    "--config", "config_path", default=None, metavar="PATH",
    help=f"Defaults file (default {settings.DEFAULT_PATH}, if it exists).",
)  # fmt: skip
@click.option(
    "--database", "database", default=None, metavar="URL",
    help="mysql://USER:PASSWORD@HOST:PORT/DB for the commands that use the jobs table "
    f"(default: ${DATABASE_URL_ENV}, else database: of the defaults file).",
)  # fmt: skip
@click.option(
    "--table", default=None, metavar="NAME",
    help=f"The jobs table (default: table: of the defaults file, else {settings.DEFAULT_TABLE}).",
)  # fmt: skip
@click.option(
    "--key", "key_file", default=None, metavar="FILE",
    help="CURVE: jobctl's key pair (a .key_secret file; see keygen).",
)  # fmt: skip
@click.option(
    "--server-key", "server_key_file", default=None, metavar="FILE",
    help="CURVE: the daemon's public key (its .key file).",
)  # fmt: skip
@click.version_option(__version__, prog_name="jobctl")
@click.pass_context
def main(
    ctx: click.Context,
    master: str | None,
    worker: str | None,
    as_json: bool,
    timeout: float | None,
    config_path: str | None,
    database: str | None,
    table: str | None,
    key_file: str | None,
    server_key_file: str | None,
) -> None:
    """Control jobd workers and jobd-master.

    Exit status: 0 success, 1 the daemon answered with an error, 2 usage error,
    3 no answer in time."""
    defaults = settings.load(config_path)
    if master is not None and worker is not None:
        raise click.UsageError("--master and --worker exclude each other")
    if worker is not None:
        kind, given, default = WORKER, worker, defaults.worker
    else:
        kind, given, default = MASTER, master, defaults.master
    address = settings.address(given, f"--{kind}") if given else default
    wait = settings.timeout(timeout, "--timeout") if timeout is not None else defaults.timeout
    ctx.obj = Daemon(
        kind, address, wait, as_json,
        curve_files=settings.curve_files(key_file, server_key_file, defaults, kind),
        database_option=database,
        table=settings.table(table, "--table") if table is not None else defaults.table,
        defaults=defaults,
    )  # fmt: skip


main.add_command(recover)
main.add_command(keygen)
main.add_command(dashboard_user)
main.add_command(top)
# The commands on the jobs table (jobctl.queue, jobctl.schedule): they need --database.
for _command in (add, wait, jobs, show, stats, targets, purge, schedule, workers):
    main.add_command(_command)


def _targets(targets: Sequence[str]) -> dict[str, Any]:
    return {"targets": list(targets) or None}


@main.command()
@click.pass_obj
def ping(daemon: Daemon) -> None:
    """Check that the daemon answers."""
    daemon.show(daemon.request("ping"), render.ping)


@main.command()
@click.argument("targets", nargs=-1)
@click.pass_obj
def poke(daemon: Daemon, targets: tuple[str, ...]) -> None:
    """Master: have the serving workers poll.

    The workers serving TARGETS (every target when none) poll; a target no live worker
    serves is remembered for the first worker that registers with it."""
    daemon.require(MASTER, "poke", "a worker is asked directly with poll")
    daemon.show(daemon.request("poke", _targets(targets)), render.poke)


@main.command()
@click.argument("targets", nargs=-1)
@click.pass_obj
def poll(daemon: Daemon, targets: tuple[str, ...]) -> None:
    """Worker: claim waiting jobs now.

    Claims waiting jobs of TARGETS (every target when none)."""
    daemon.require(WORKER, "poll", "through the master, use poke")
    daemon.show(daemon.request("poll", _targets(targets)), render.targets_done("polling"))


def _pause_or_continue(daemon: Daemon, verb: str, targets: Sequence[str]) -> None:
    reply = daemon.request(verb, _targets(targets))
    done = "paused" if verb == "pause" else "continued"
    daemon.show(reply, render.fan_out(done) if daemon.kind == MASTER else render.targets_done(done))


@main.command()
@click.argument("targets", nargs=-1)
@click.pass_obj
def pause(daemon: Daemon, targets: tuple[str, ...]) -> None:
    """Stop starting jobs of TARGETS.

    Every target when none; through the master, on every worker serving them.  Running
    jobs go on."""
    _pause_or_continue(daemon, "pause", targets)


@main.command("continue")
@click.argument("targets", nargs=-1)
@click.pass_obj
def continue_(daemon: Daemon, targets: tuple[str, ...]) -> None:
    """Resume paused TARGETS (all when none)."""
    _pause_or_continue(daemon, "continue", targets)


@main.command()
@click.option(
    "--poll-workers", is_flag=True, help="Master: add each worker's own status (2 s at most)."
)
@click.pass_obj
def status(daemon: Daemon, poll_workers: bool) -> None:
    """Status of the daemon.

    A worker: its targets and slots.  The master: its registered workers."""
    if daemon.kind == WORKER:
        if poll_workers:
            raise click.UsageError("--poll-workers is a master option")
        daemon.show(daemon.request("status"), render.worker_status)
    else:
        reply = daemon.request("status", {"poll_workers": poll_workers})
        daemon.show(reply, render.master_status)


@main.command("list-workers")
@click.option("--poll-workers", is_flag=True, help="Add each worker's running and queued jobs.")
@click.pass_obj
def list_workers(daemon: Daemon, poll_workers: bool) -> None:
    """Master: the registered workers."""
    daemon.require(MASTER, "list-workers")
    reply = daemon.request("status", {"poll_workers": poll_workers})
    daemon.show(reply["workers"] if daemon.json else reply, render.workers)


@main.command("list-targets", hidden=True)
@click.pass_context
def list_targets(ctx: click.Context) -> None:
    """The former name of `targets`."""
    click.echo("jobctl: list-targets is now `jobctl targets`", err=True)
    ctx.invoke(targets)


def _parse_slots(values: Sequence[str]) -> Any:
    """`4` (the slot "default") or `low=2 high=4`."""
    if len(values) == 1 and values[0].isdigit():
        return int(values[0])
    slots: dict[str, Any] = {}
    for value in values:
        slot, sep, concurrency = value.partition("=")
        if not sep or not concurrency.isdigit():
            raise click.UsageError(f"expected CONCURRENCY or SLOT=CONCURRENCY, got {value!r}")
        slots[slot] = int(concurrency)
    return slots


@main.command("add-target")
@click.argument("target")
@click.argument("slots", nargs=-1, required=True)
@click.pass_obj
def add_target(daemon: Daemon, target: str, slots: tuple[str, ...]) -> None:
    """Worker: serve a new target.

    SLOTS is a concurrency (one slot "default") or SLOT=CONCURRENCY pairs."""
    daemon.require(WORKER, "add-target")
    reply = daemon.request("add-target", {"target": target, "slots": _parse_slots(slots)})
    daemon.show(reply, render.target_changed)


@main.command("remove-target")
@click.argument("target")
@click.pass_obj
def remove_target(daemon: Daemon, target: str) -> None:
    """Worker: stop serving TARGET.

    Its running jobs finish; queued ones go back to waiting."""
    daemon.require(WORKER, "remove-target")
    daemon.show(daemon.request("remove-target", {"target": target}), render.target_removed)


@main.command("set-target-concurrency")
@click.argument("target")
@click.argument("concurrency", type=int)
@click.option("--slot", default="default", show_default=True, help="The slot to change.")
@click.pass_obj
def set_target_concurrency(daemon: Daemon, target: str, concurrency: int, slot: str) -> None:
    """Worker: set a slot's concurrency.

    Adds the slot if it is new."""
    daemon.require(WORKER, "set-target-concurrency")
    data = {"target": target, "concurrency": concurrency, "slot": slot}
    daemon.show(daemon.request("set-target-concurrency", data), render.target_changed)


_TARGET_HELP = "Master: the target of the jobs (the master routes by target)."


def _routed_target(daemon: Daemon, command: str, target: str | None) -> str | None:
    if daemon.kind == MASTER and target is None:
        hint = " (or, for run-manual, a database)" if command == "run-manual" else ""
        raise click.UsageError(f"{command} through the master needs --target TARGET{hint}")
    if daemon.kind == WORKER and target is not None:
        raise click.UsageError("--target is a master option (a worker knows its jobs)")
    return target


@main.command("run-manual")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--target", default=None, help=_TARGET_HELP)
@click.option(
    "--wait", type=float, default=3600.0, show_default=True, metavar="SECONDS",
    help="How long the jobs may run before jobctl gives up waiting.",
)  # fmt: skip
@click.pass_obj
def run_manual(daemon: Daemon, ids: tuple[int, ...], target: str | None, wait: float) -> None:
    """Run manual jobs now; show the outcome.

    The rows IDS must be in status 'manual'.  Through the master, --target names
    their target (the master routes by target); without it, their rows tell it, read
    from the database (--database, JOBD_DATABASE_URL or database: of ~/.jobctl.yaml)."""
    if daemon.kind == MASTER and target is None and _has_database(daemon):
        with opened(daemon) as jobd:
            daemon.show(jobd.run_manual(list(ids), timeout=wait), render.manual)
        return
    target = _routed_target(daemon, "run-manual", target)
    if daemon.kind == MASTER:
        data: dict[str, Any] = {"jobs": [{"id": i, "target": target} for i in ids]}
    else:
        data = {"ids": list(ids)}
    daemon.validate("run-manual", data)
    daemon.request("ping")  # no answer is told within --timeout, not after --wait
    daemon.show(daemon.request("run-manual", data, timeout=wait), render.manual)


def _has_database(daemon: Daemon) -> bool:
    return bool(
        daemon.database_option or os.environ.get(DATABASE_URL_ENV) or daemon.defaults.database
    )


@main.command("send-signal")
@click.argument("job_id", metavar="ID", type=int)
@click.argument("signal")
@click.option("--target", default=None, help=_TARGET_HELP)
@click.pass_obj
def send_signal(daemon: Daemon, job_id: int, signal: str, target: str | None) -> None:
    """Signal a running job.

    SIGNAL is a name (TERM, SIGKILL) or a number.  Through the master, --target names
    the job's target."""
    target = _routed_target(daemon, "send-signal", target)
    sig: str | int = int(signal) if signal.isdigit() else signal  # the protocol takes both
    if daemon.kind == MASTER:
        data: dict[str, Any] = {"jobs": [{"id": job_id, "signal": sig, "target": target}]}
    else:
        data = {"jobs": {job_id: sig}}
    daemon.show(daemon.request("send-signal", data), render.signals)
