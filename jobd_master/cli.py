"""`jobd-master`: the master daemon's command line."""

from __future__ import annotations

import asyncio
import sys

import click

from jobd import __version__
from jobd.config import DEFAULT_MASTER_CONFIG, ConfigError, load_master_config
from jobd.logs import setup_logging
from jobd_master.daemon import StartupError, check_schedules, load_curve, run_master

#: Exit status for a configuration or setup the master cannot run with.
EXIT_CONFIG = 2


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_MASTER_CONFIG,
    show_default=True,
    help="YAML configuration file.",
)
@click.option("--check", is_flag=True, help="Validate the config, then exit.")
@click.version_option(__version__, prog_name="jobd-master")
def main(config_path: str, check: bool) -> None:
    """jobd-master: keeps the registry of workers and routes pokes and requests to them."""
    try:
        config = load_master_config(config_path)
    except ConfigError as exc:
        click.echo(f"jobd-master: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if check:
        try:
            load_curve(config)  # the key files are readable and hold keys
            asyncio.run(check_schedules(config))
        except StartupError as exc:
            click.echo(f"jobd-master: {config_path}: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        schedules = f", schedules of {config.table}" if config.database else ""
        click.echo(f"jobd-master: {config_path}: OK (listen {config.listen}{schedules})")
        sys.exit(0)
    setup_logging(config.log_level, "jobd-master")
    try:
        sys.exit(asyncio.run(run_master(config)))
    except StartupError as exc:
        click.echo(f"jobd-master: {config_path}: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
