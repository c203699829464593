"""jobctl's defaults file (~/.jobctl.yaml):

master: tcp://10.0.0.5:7081     # address used by --master (and when no daemon is chosen)
worker: tcp://127.0.0.1:7080    # address used by --worker without an address
timeout: 5                      # seconds to wait for an answer
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

DEFAULT_PATH = "~/.jobctl.yaml"
DEFAULT_MASTER = "tcp://127.0.0.1:7081"
DEFAULT_WORKER = "tcp://127.0.0.1:7080"
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Settings:
    master: str = DEFAULT_MASTER
    worker: str = DEFAULT_WORKER
    timeout: float = DEFAULT_TIMEOUT


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
        raise click.UsageError(f"{file}: expected a map of master, worker, timeout")
    for key in data:
        if key not in ("master", "worker", "timeout"):
            raise click.UsageError(f"{file}: {key}: unknown key")
    values: dict[str, Any] = {}
    for key in ("master", "worker"):
        if data.get(key) is not None:
            values[key] = address(data[key], f"{file}: {key}")
    if data.get("timeout") is not None:
        values["timeout"] = timeout(data["timeout"], f"{file}: timeout")
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
