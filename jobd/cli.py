"""`jobd`: the worker daemon's command line."""

from __future__ import annotations

import asyncio
import sys

import click

from jobd import __version__
from jobd.config import DEFAULT_WORKER_CONFIG, ConfigError, load_worker_config
from jobd.daemon import StartupError, connect_store, load_curve, run_worker
from jobd.logs import setup_logging

#: Exit status for a configuration or setup the worker cannot run with.
EXIT_CONFIG = 2


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_WORKER_CONFIG,
    show_default=True,
    help="YAML configuration file.",
)
@click.option("--check", is_flag=True, help="Validate the config and the database, then exit.")
@click.version_option(__version__, prog_name="jobd")
def main(config_path: str, check: bool) -> None:
    """The jobd worker: runs the jobs of its targets from the jobs table."""
    try:
        config = load_worker_config(config_path)
    except ConfigError as exc:
        click.echo(f"jobd: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    setup_logging(config.log_level, f"jobd[{config.name}]")
    try:
        if check:
            asyncio.run(_check(config))
            click.echo(f"jobd: {config_path}: OK (database {config.database.redacted()})")
            sys.exit(0)
        sys.exit(asyncio.run(run_worker(config)))
    except StartupError as exc:
        click.echo(f"jobd: {config_path}: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


async def _check(config) -> None:  # type: ignore[no-untyped-def]
    load_curve(config)  # the key files are readable and hold keys
    store = await connect_store(config, retry=False)
    await store.close()
