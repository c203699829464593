"""jobctl's defaults file (~/.jobctl.yaml):

master: tcp://10.0.0.5:7081     # address used by --master (and when no daemon is chosen)
worker: tcp://127.0.0.1:7080    # address used by --worker without an address
timeout: 5                      # seconds to wait for an answer
database: mysql://jobd:SECRET@db:3306/jobd   # for commands that use the jobs table
table: jobs                     # the jobs table in that database
key: ~/.jobd/curve/ops.key_secret             # CURVE: jobctl's own key pair
master_server_key: ~/.jobd/curve/master.key   # CURVE: the master's public key
worker_server_key: ~/.jobd/curve/worker.key   # CURVE: the --worker default's public key

The database URL of the table commands comes from `--database`, else the variable
JOBD_DATABASE_URL, else `database:` here (see `database_url`).  CURVE keys come from
`--key`/`--server-key`, else the keys here (see `curve_files` and docs/curve.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from jobd.config import DATABASE_URL_ENV, DatabaseURL
from jobd.names import TABLE_PATTERN

DEFAULT_PATH = "~/.jobctl.yaml"
DEFAULT_MASTER = "tcp://127.0.0.1:7081"
DEFAULT_WORKER = "tcp://127.0.0.1:7080"
DEFAULT_TIMEOUT = 5.0
DEFAULT_TABLE = "jobs"
_KEYS = (
    "master", "worker", "timeout", "database", "table",
    "key", "master_server_key", "worker_server_key",
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    master: str = DEFAULT_MASTER
    worker: str = DEFAULT_WORKER
    timeout: float = DEFAULT_TIMEOUT
    #: The URL as written (it may hold a password: never print it; see database_url).
    database: str | None = None
    table: str = DEFAULT_TABLE
    key: str | None = None
    master_server_key: str | None = None
    worker_server_key: str | None = None


def load(path: str | None) -> Settings:
    """The settings of `path`, or of ~/.jobctl.yaml when it exists; a bad file is a usage
    error (exit 2) naming the file and the key."""
    explicit = path is not None
    file = Path(os.path.expanduser(path or DEFAULT_PATH))
    if not explicit and not file.exists():
        return Settings()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.UsageError(f"{file}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise click.UsageError(f"{file}: not valid YAML") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise click.UsageError(f"{file}: expected a map of {', '.join(_KEYS)}")
    for key in data:
        if key not in _KEYS:
            raise click.UsageError(f"{file}: {key}: unknown key")
    values: dict[str, Any] = {}
    for key in ("master", "worker"):
        if data.get(key) is not None:
            values[key] = address(data[key], f"{file}: {key}")
    if data.get("timeout") is not None:
        values["timeout"] = timeout(data["timeout"], f"{file}: timeout")
    if data.get("database") is not None:
        values["database"] = _string(data["database"], f"{file}: database")
    if data.get("table") is not None:
        values["table"] = table(data["table"], f"{file}: table")
    for key in ("key", "master_server_key", "worker_server_key"):
        if data.get(key) is not None:
            # Relative to the file, so a ~/.jobctl.yaml can name keys next to it.
            value = os.path.expanduser(_string(data[key], f"{file}: {key}"))
            values[key] = str(file.parent / value)
    return Settings(**values)


def address(value: Any, where: str) -> str:
    """An endpoint; a bare HOST:PORT means tcp://HOST:PORT."""
    if not isinstance(value, str) or ":" not in value or value.strip() != value:
        raise click.UsageError(f"{where}: expected an address like tcp://HOST:PORT")
    return value if "://" in value else f"tcp://{value}"


def timeout(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise click.UsageError(f"{where}: expected a number of seconds > 0")
    return float(value)


def table(value: Any, where: str) -> str:
    if not isinstance(value, str) or not TABLE_PATTERN.fullmatch(value):
        raise click.UsageError(f"{where}: expected a table name ({TABLE_PATTERN.pattern})")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise click.UsageError(f"{where}: expected a string")
    return value


def database_url(option: str | None, defaults: Settings) -> DatabaseURL:
    """The database of jobctl's table commands: `--database`, else JOBD_DATABASE_URL, else
    `database:` of the defaults file.  A usage error (exit 2) when none is given or the
    URL is malformed; the message names the source, never the password."""
    env = os.environ.get(DATABASE_URL_ENV)
    for source, url in (
        ("--database", option),
        (DATABASE_URL_ENV, env),
        (f"{DEFAULT_PATH}: database", defaults.database),
    ):
        if url:
            try:
                return DatabaseURL.parse(url)
            except ValueError as exc:
                raise click.UsageError(f"{source}: {exc}") from None
    raise click.UsageError(
        f"no database: give --database URL, set {DATABASE_URL_ENV} or put database: in "
        f"{DEFAULT_PATH}"
    )


def curve_files(
    key: str | None, server_key: str | None, defaults: Settings, kind: str
) -> tuple[str, str] | None:
    """(jobctl's key pair file, the daemon's public key file) for CURVE, or None for a
    plain connection.  The options win over the defaults file; `kind` is "master" or
    "worker" and picks the defaults file's server key."""
    key = key or defaults.key
    server_key = server_key or getattr(defaults, f"{kind}_server_key")
    if key is None and server_key is None:
        return None
    if key is None or server_key is None:
        missing = "--key (or key:)" if key is None else f"--server-key (or {kind}_server_key:)"
        raise click.UsageError(f"CURVE needs both keys: {missing} is missing")
    return key, server_key
