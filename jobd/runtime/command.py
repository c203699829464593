"""The command line both daemons share, their start-up errors, and what they set up
before they serve: CURVE keys and the request socket.  Free of heavy imports (no
database driver), so the master stays light."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
import zmq
import zmq.asyncio

from jobd import __version__
from jobd.config import ConfigError, CurveConfig
from jobd.runtime.logs import setup_logging
from jobd.wire.curve import Authenticator, CurveError, DaemonCurve, load_daemon_curve
from jobd.wire.endpoint import bind_router

C = TypeVar("C")


#: Exit status for a configuration or setup a daemon cannot run with.
EXIT_CONFIG = 2


class StartupError(Exception):
    """A daemon cannot run with this setup (exit status 2)."""


def load_curve(section: CurveConfig) -> DaemonCurve | None:
    """A daemon's CURVE keys (None: off); StartupError for a key file it cannot use."""
    try:
        return load_daemon_curve(section)
    except CurveError as exc:
        raise StartupError(f"curve: {exc}") from None


def daemon_command(
    prog: str,
    default_config: str,
    load: Callable[[str], C],
    check: Callable[[C], Awaitable[str]],
    run: Callable[[C], Awaitable[int]],
    log_name: Callable[[C], str],
    doc: str,
) -> click.Command:
    """The command line both daemons share: `PROG [--config PATH] [--check] [--version]`.

    `check` validates what lies beyond the file and returns what the OK line reports;
    a bad file or a StartupError exits 2 with the file and the reason."""

    @click.command(help=doc, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option(
        "--config", "config_path", default=default_config, show_default=True,
        help="YAML configuration file.",
    )  # fmt: skip
    @click.option("--check", "only_check", is_flag=True, help="Validate the setup, then exit.")
    @click.version_option(__version__, prog_name=prog)
    def main(config_path: str, only_check: bool) -> None:
        try:
            config = load(config_path)
        except ConfigError as exc:
            click.echo(f"{prog}: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        setup_logging(getattr(config, "log_level", "info"), log_name(config))
        try:
            if only_check:
                checked = asyncio.run(check(config))
                click.echo(f"{prog}: {config_path}: OK ({checked})")
                sys.exit(0)
            sys.exit(asyncio.run(run(config)))
        except StartupError as exc:
            click.echo(f"{prog}: {config_path}: {exc}", err=True)
            sys.exit(EXIT_CONFIG)

    return main


def listen(
    ctx: zmq.asyncio.Context, endpoint: str, curve: DaemonCurve | None
) -> tuple[zmq.asyncio.Socket, Authenticator | None]:
    """A daemon's request socket, and with CURVE the context's authenticator, started
    before the socket exists so no handshake goes unchecked; StartupError if it cannot
    bind (the context is then terminated)."""
    auth = Authenticator(ctx, curve.authorized_keys) if curve else None
    if auth is not None:
        auth.start()
    try:
        return bind_router(ctx, endpoint, curve.keys if curve else None), auth
    except zmq.ZMQError as exc:
        if auth is not None:
            auth.stop()
        ctx.term()
        raise StartupError(f"cannot listen on {endpoint}: {exc}") from None
