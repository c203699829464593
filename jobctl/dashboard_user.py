"""`jobctl dashboard-user add | remove | list`: the users file of the HTTP endpoints
(`http_users:` of jobd-master's dashboard and of a worker's metrics).  It holds bcrypt
hashes only, and is written whole with mode 600; a daemon reads it when it starts."""

from __future__ import annotations

import sys

import click

from jobctl.connection import EXIT_ERROR, Daemon, fail
from jobd.users import ROLES, UsersError, load_users, remove_user, set_user

DEFAULT_FILE = "/etc/jobd/http-users"
_FILE = click.option(
    "--file", "path", default=DEFAULT_FILE, show_default=True, metavar="PATH",
    help="The users file (http_users: in the daemons' configs).",
)  # fmt: skip


@click.group("dashboard-user")
def dashboard_user() -> None:
    """Users of the dashboard and of the metrics (viewers read, operators also act)."""


@dashboard_user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (one line).")
@_FILE
@click.pass_obj
def add(daemon: Daemon, name: str, role: str, password_stdin: bool, path: str) -> None:
    """Add user NAME, or give an existing one a new role and password."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        set_user(path, name, role, password)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except (UsersError, OSError) as exc:
        fail(str(exc), EXIT_ERROR)
    daemon.show({"user": name, "role": role, "file": path}, lambda r: f"{name}: {role} ({path})")


@dashboard_user.command("remove")
@click.argument("name")
@_FILE
@click.pass_obj
def remove(daemon: Daemon, name: str, path: str) -> None:
    """Remove user NAME (their sessions end at their next request)."""
    try:
        removed = remove_user(path, name)
    except (UsersError, OSError) as exc:
        fail(str(exc), EXIT_ERROR)
    if not removed:
        fail(f"no user {name} in {path}", EXIT_ERROR)
    daemon.show({"removed": name}, lambda r: f"{name} removed")


@dashboard_user.command("list")
@_FILE
@click.pass_obj
def list_(daemon: Daemon, path: str) -> None:
    """The users and their roles (never a hash)."""
    try:
        users = load_users(path)
    except UsersError as exc:
        fail(str(exc), EXIT_ERROR)
    listed = {name: user.role for name, user in sorted(users.items())}
    daemon.show(listed, lambda r: "\n".join(f"{n}  {role}" for n, role in r.items()) or "no users")
