"""YAML configuration of jobd and jobd-master, validated into frozen dataclasses.

Every error names the file and the key (`/etc/jobd.yaml: targets.video.low: ...`).
The database password is kept out of every repr and message.  Of ours, this module
imports only the leaves `jobd.names`, `jobd.config_reader` and `jobd.database_url`.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobd.config_exposure import (
    CurveConfig,
    HttpConfig,
    check_exposure,
    is_loopback,
    parse_curve,
    parse_http,
)
from jobd.config_reader import ConfigError, Reader, load_yaml
from jobd.database_url import DatabaseURL
from jobd.names import DEFAULT_SLOT, NAME_PATTERN, TABLE_PATTERN, WORKER_NAME_PATTERN

__all__ = [
    "ConfigError", "CurveConfig", "DatabaseURL", "HttpConfig", "MasterConfig", "WorkerConfig",
    "is_loopback",
]  # fmt: skip

DEFAULT_WORKER_CONFIG = "/etc/jobd.yaml"
DEFAULT_MASTER_CONFIG = "/etc/jobd-master.yaml"
DATABASE_URL_ENV = "JOBD_DATABASE_URL"
DEFAULT_EVENTS = "tcp://127.0.0.1:7082"

URL_PATTERN = re.compile(r"https?://[^\s]{1,1000}")
ENDPOINT_PATTERN = re.compile(r"(tcp://[^\s]+:\d+|ipc://[^\s]+|inproc://[^\s]+)")
LOG_LEVELS = ("debug", "info", "warning", "error")
RESCUE_POLICIES = ("retry", "fail")
#: Kept bytes per stream; decoded output can grow up to 3x (replacement characters)
#: and must still fit the `mediumtext` columns (16 MiB).
MAX_OUTPUT_BUFFER = 4 << 20
#: A target's map is the long form (with options) when it has one of these keys;
#: otherwise it is a map of slot: concurrency.
LONG_FORM_KEYS = frozenset({"slots", "concurrency"})


@dataclass(frozen=True)
class LauncherConfig:
    command: str
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetConfig:
    slots: Mapping[str, int]
    timeout: float = 0.0  # seconds a job may run; 0: no limit
    max_attempts: int = 1  # 1: no retry, as in the seed
    retry_backoff: float = 10.0  # seconds before the second attempt; doubles each time
    retry_backoff_max: float = 3600.0
    description: str = ""  # shown by `jobctl targets`
    launcher: LauncherConfig | None = None  # this target's own program; None: the global one
    callback_url: str | None = None  # default for jobs of this target without their own
    #: A running job of a dead worker: "retry" (within max_attempts) or "fail".
    on_rescue: str = "retry"
    #: Rescues of one job before it fails: a job that kills its host every time stops.
    max_rescues: int = 3


@dataclass(frozen=True)
class CallbackConfig:
    output_limit: int = 4096  # bytes of stdout and of stderr sent in a callback
    max_attempts: int = 5
    backoff: float = 1.0  # seconds before the second attempt; doubles each time
    timeout: float = 10.0  # seconds for one HTTP request


@dataclass(frozen=True)
class WorkerConfig:
    path: str
    name: str
    listen: str
    master: str | None
    database: DatabaseURL
    table: str
    fetch_limit: int
    poll_interval: float
    launcher: LauncherConfig
    max_output_buffer: int
    targets: Mapping[str, TargetConfig]
    log_level: str
    kill_grace: float = 10.0
    shutdown_timeout: float = 30.0
    callbacks: CallbackConfig = field(default_factory=lambda: CallbackConfig())
    scheduler: bool = False  # run the schedules here too (the master runs them anyway)
    curve: CurveConfig = field(default_factory=CurveConfig)
    allow_insecure: bool = False  # plain text on a non-loopback address
    heartbeat_interval: float = 5.0  # seconds between heartbeats in the workers table
    lease: float = 30.0  # seconds after its last heartbeat the instance counts as alive
    rescuer: bool = False  # rescue the rows of dead instances here too (the master does)
    rescue_interval: float = 5.0  # seconds between looks for dead instances
    #: Prometheus metrics at http://ADDRESS/metrics; address None: off.
    metrics: HttpConfig = field(default_factory=HttpConfig)


@dataclass(frozen=True)
class MasterConfig:
    path: str
    listen: str
    ping_interval: float
    log_level: str
    curve: CurveConfig = field(default_factory=CurveConfig)
    allow_insecure: bool = False
    #: The jobs database, for the scheduler; None: no scheduler in the master.
    database: DatabaseURL | None = None
    table: str = "jobs"
    #: PUB endpoint of the job events; None: events are not published.
    events: str | None = DEFAULT_EVENTS
    #: With a database: seconds between looks for dead worker instances to rescue.
    rescue_interval: float = 5.0
    #: The dashboard and the metrics at http://ADDRESS/; address None: off.
    http: HttpConfig = field(default_factory=HttpConfig)


def _log_level(reader: Reader) -> str:
    log = reader.section("log")
    level = log.string("level", "info").lower()
    if level not in LOG_LEVELS:
        raise log.error(log.key("level"), f"expected one of {', '.join(LOG_LEVELS)}")
    log.finish()
    return level


def _slots(reader: Reader, key: str, value: Any) -> dict[str, int]:
    """A concurrency for the slot "default", or a map of slot: concurrency."""
    slots = value if isinstance(value, dict) else {DEFAULT_SLOT: value}
    if not slots:
        raise reader.error(key, "expected at least one slot")
    clean: dict[str, int] = {}
    for slot, concurrency in slots.items():
        slot_key = f"{key}.{slot}" if isinstance(value, dict) else key
        if not isinstance(slot, str) or not NAME_PATTERN.fullmatch(slot):
            raise reader.error(slot_key, f"slot names must match {NAME_PATTERN.pattern}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise reader.error(slot_key, "concurrency must be an integer")
        if concurrency < 1:
            raise reader.error(slot_key, f"concurrency must be at least 1, got {concurrency}")
        clean[slot] = concurrency
    return clean


def _target(reader: Reader, key: str, value: Any) -> TargetConfig:
    """`mail: 20`, `video: {low: 2, high: 4}`, or the long form with options:
    `reports: {concurrency: 2 | slots: {...}, timeout: 600, max_attempts: 3, ...}`."""
    if not isinstance(value, dict) or not LONG_FORM_KEYS & set(value):
        return TargetConfig(slots=_slots(reader, key, value))
    section = Reader(reader.path, value, key + ".")
    if ("slots" in value) == ("concurrency" in value):
        raise reader.error(key, "give either concurrency or slots")
    slots_key = "slots" if "slots" in value else "concurrency"
    target = TargetConfig(
        slots=_slots(reader, f"{key}.{slots_key}", section.get(slots_key)),
        timeout=section.number("timeout", 0.0, 0.0),
        max_attempts=section.integer("max_attempts", 1, 1, 1000),
        retry_backoff=section.number("retry_backoff", 10.0, 0.0),
        retry_backoff_max=section.number("retry_backoff_max", 3600.0, 0.0),
        description=section.string("description", ""),
        launcher=_launcher(section, required=False),
        callback_url=section.matching("callback_url", URL_PATTERN, "an http:// or https:// URL"),
        on_rescue=section.choice("on_rescue", RESCUE_POLICIES, "retry"),
        max_rescues=section.integer("max_rescues", 3, 0, 1000),
    )
    section.finish()
    return target


def parse_targets(reader: Reader) -> dict[str, TargetConfig]:
    raw = reader.get("targets", required=True)
    if not isinstance(raw, dict):
        raise reader.error("targets", "expected a map of target: concurrency or slots")
    targets = {}
    for name, value in raw.items():
        key = f"targets.{name}"
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise reader.error(key, f"target names must match {NAME_PATTERN.pattern}")
        targets[name] = _target(reader, key, value)
    return targets


def _database(reader: Reader, required: bool = True) -> Any:
    # The environment wins, so the password can stay out of the file.
    url = os.environ.get(DATABASE_URL_ENV) or reader.string("database")
    reader.used.add("database")
    if not url and not required:
        return None
    if not url:
        raise reader.error("database", f"required key is missing (or set {DATABASE_URL_ENV})")
    try:
        return DatabaseURL.parse(url)
    except ValueError as exc:
        source = DATABASE_URL_ENV if os.environ.get(DATABASE_URL_ENV) else "database"
        raise reader.error(source, str(exc)) from None


def _launcher(reader: Reader, required: bool = True) -> Any:
    if not required and reader.get("launcher") is None:
        return None
    section = reader.section("launcher", required=required)
    command = section.string("command", required=True)
    if not command.strip():
        raise section.error(section.key("command"), "must not be empty")
    cwd = section.string("cwd")
    env = section.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str)
        and isinstance(v, str | int | float)
        and not isinstance(v, bool)
        and k
        and "=" not in k
        and "\0" not in k + str(v)
        for k, v in env.items()
    ):
        raise section.error(section.key("env"), "expected a map of NAME: string")
    section.finish()
    return LauncherConfig(command=command, cwd=cwd, env={k: str(v) for k, v in env.items()})


def _callbacks(reader: Reader) -> CallbackConfig:
    section = reader.section("callbacks")
    config = CallbackConfig(
        output_limit=section.integer("output_limit", 4096, 0, MAX_OUTPUT_BUFFER),
        max_attempts=section.integer("max_attempts", 5, 1, 100),
        backoff=section.number("backoff", 1.0, 0.0),
        timeout=section.number("timeout", 10.0, 0.1),
    )
    section.finish()
    return config


def load_worker_config(path: str) -> WorkerConfig:
    reader = Reader(path, load_yaml(path))
    name = reader.matching(
        "name",
        WORKER_NAME_PATTERN,
        "a name of letters, digits, '_', '.', '-'",
        default=socket.gethostname().split(".")[0] or "jobd",
    )
    config = WorkerConfig(
        path=path,
        name=name,
        listen=reader.matching(
            "listen", ENDPOINT_PATTERN, "a ZeroMQ endpoint", default="tcp://127.0.0.1:7080"
        ),
        master=reader.matching("master", ENDPOINT_PATTERN, "a ZeroMQ endpoint"),
        database=_database(reader),
        table=reader.matching("table", TABLE_PATTERN, "a table name", default="jobs"),
        fetch_limit=reader.integer("fetch_limit", 100, 1, 100_000),
        poll_interval=reader.number("poll_interval", 5.0, 0.0),
        launcher=_launcher(reader),
        max_output_buffer=reader.integer("max_output_buffer", 1 << 20, 0, MAX_OUTPUT_BUFFER),
        targets=parse_targets(reader),
        log_level=_log_level(reader),
        kill_grace=reader.number("kill_grace", 10.0, 0.0),
        shutdown_timeout=reader.number("shutdown_timeout", 30.0, 0.0),
        callbacks=_callbacks(reader),
        scheduler=reader.boolean("scheduler", False),
        curve=parse_curve(reader, reader.data.get("master"), worker=True),
        allow_insecure=reader.boolean("allow_insecure", False),
        heartbeat_interval=reader.number("heartbeat_interval", 5.0, 0.05),
        lease=reader.number("lease", 30.0, 0.15),
        rescuer=reader.boolean("rescuer", False),
        rescue_interval=reader.number("rescue_interval", 5.0, 0.05),
        metrics=parse_http(reader, "metrics", secret=False),
    )
    if config.lease < 3 * config.heartbeat_interval:
        raise reader.error(
            "lease", f"must be at least 3 x heartbeat_interval ({3 * config.heartbeat_interval:g})"
        )
    check_exposure(reader, "listen", config.listen, config.curve)
    reader.finish()
    return config


def load_master_config(path: str) -> MasterConfig:
    reader = Reader(path, load_yaml(path))
    config = MasterConfig(
        path=path,
        listen=reader.matching(
            "listen", ENDPOINT_PATTERN, "a ZeroMQ endpoint", default="tcp://127.0.0.1:7081"
        ),
        ping_interval=reader.number("ping_interval", 5.0, 0.05),
        log_level=_log_level(reader),
        curve=parse_curve(reader),
        allow_insecure=reader.boolean("allow_insecure", False),
        database=_database(reader, required=False),
        table=reader.matching("table", TABLE_PATTERN, "a table name", default="jobs"),
        events=_events(reader),
        rescue_interval=reader.number("rescue_interval", 5.0, 0.05),
        http=parse_http(reader, "http"),
    )
    check_exposure(reader, "listen", config.listen, config.curve)
    if config.events is not None:
        check_exposure(reader, "events", config.events, config.curve)
    reader.finish()
    return config


def _events(reader: Reader) -> str | None:
    """The master's PUB endpoint for job events; `events: false` turns them off."""
    if reader.get("events") is False:
        return None
    return reader.matching("events", ENDPOINT_PATTERN, "a ZeroMQ endpoint or false",
                           default=DEFAULT_EVENTS)  # fmt: skip
