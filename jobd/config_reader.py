"""Reading one YAML file of settings: typed keys pulled out of its maps, every error
naming the file and the key path (`/etc/jobd.yaml: targets.video.low: ...`), and unknown
keys refused.  jobd.config builds the daemons' configurations with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file and the key."""


class Reader:
    """Pulls typed keys out of one YAML map and reports errors with the file and key path."""

    def __init__(self, path: str, data: Any, prefix: str = "") -> None:
        self.path = path
        self.prefix = prefix
        if not isinstance(data, dict):
            where = prefix.rstrip(".") or "top level"
            raise self.error(where, "expected a map")
        self.data = data
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}")

    def key(self, name: str) -> str:
        return self.prefix + name

    def get(self, name: str, default: Any = None, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            if required:
                raise self.error(self.key(name), "required key is missing")
            return default
        return self.data[name]

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(self.key(name), f"expected an integer, got {type(value).__name__}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self.error(self.key(name), f"must be {bound}, got {value}")
        return value

    def number(self, name: str, default: float, minimum: float) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(self.key(name), f"expected a number, got {type(value).__name__}")
        if value < minimum:
            raise self.error(self.key(name), f"must be >= {minimum}, got {value}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise self.error(self.key(name), f"expected true or false, got {type(value).__name__}")
        return value

    def string(self, name: str, default: str | None = None, required: bool = False) -> Any:
        value = self.get(name, default, required)
        if value is not None and not isinstance(value, str):
            raise self.error(self.key(name), f"expected a string, got {type(value).__name__}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.error(self.key(name), f"expected one of {', '.join(choices)}")
        return str(value)

    def matching(self, name: str, pattern: re.Pattern[str], what: str, **kw: Any) -> Any:
        value = self.string(name, **kw)
        if value is not None and not pattern.fullmatch(value):
            raise self.error(self.key(name), f"expected {what}, got {value!r:.80}")
        return value

    def section(self, name: str, required: bool = False) -> Reader:
        return Reader(self.path, self.get(name, {}, required), self.key(name) + ".")

    def finish(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            raise self.error(self.key(str(unknown[0])), "unknown key")


def load_yaml(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "syntax"
        raise ConfigError(f"{path}: {where}: not valid YAML") from None
    return {} if data is None else data
