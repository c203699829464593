"""Fixtures: a real MariaDB database per test run, a fresh jobs table per test, and
real `jobd` / `jobd-master` processes started with generated configs."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml
from click.testing import CliRunner, Result

from jobctl.cli import main as jobctl_main
from jobd.client import NoAnswer, call
from jobd.config import DatabaseURL

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = (ROOT / "schema.sql").read_text()
SERVER_URL = os.environ.get("JOBD_TEST_DATABASE_URL", "mysql://root@127.0.0.1:3306/")


@dataclass(frozen=True)
class Database:
    url: DatabaseURL

    def connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.url.host,
            port=self.url.port,
            user=self.url.user,
            password=self.url.password,
            database=self.url.database,
            autocommit=True,
            charset="utf8mb4",
        )

    @property
    def url_string(self) -> str:
        password = f":{self.url.password}" if self.url.password else ""
        return (
            f"mysql://{self.url.user}{password}@{self.url.host}:{self.url.port}/{self.url.database}"
        )


@pytest.fixture(scope="session")
def database() -> Iterator[Database]:
    """A database of its own for this test run, dropped afterwards."""
    server = DatabaseURL.parse(SERVER_URL.rstrip("/") + "/mysql")
    name = f"jobd_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = pymysql.connect(
        host=server.host, port=server.port, user=server.user, password=server.password,
        autocommit=True,
    )  # fmt: skip
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield Database(DatabaseURL(server.user, server.password, server.host, server.port, name))
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


class Jobs:
    """A fresh jobs table for one test, with helpers to fill and inspect it."""

    def __init__(self, db: Database, table: str) -> None:
        self.db = db
        self.table = table
        self.conn = db.connect()
        # `jobs` and its companions `jobs_schedules`, `jobs_workers`, ...
        schema = re.sub(r"`jobs((?:_[a-z]+)?)`", rf"`{table}\1`", SCHEMA)
        for statement in schema.split(";\n"):
            if statement.strip():
                self.execute(statement)

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def insert(self, target: str, count: int = 1, **columns: Any) -> list[int]:
        """Insert `count` rows in one statement; returns their ids."""
        columns = {"time_created": int(time.time()), **columns}
        names = ["target", *columns]
        row = [target, *columns.values()]
        sql = f"INSERT INTO `{self.table}` ({', '.join(names)}) VALUES " + ", ".join(
            ["(" + ", ".join(["%s"] * len(names)) + ")"] * count
        )
        with self.conn.cursor() as cur:
            cur.execute(sql, row * count)
            first = cur.lastrowid
        return list(range(first, first + count))

    def rows(self, where: str = "1", params: Any = None) -> list[dict[str, Any]]:
        with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(f"SELECT * FROM `{self.table}` WHERE {where} ORDER BY id", params)
            return list(cur.fetchall())

    def row(self, job_id: int) -> dict[str, Any]:
        rows = self.rows("id = %s", (job_id,))
        assert rows, f"no row {job_id}"
        return rows[0]

    def count(self, where: str = "1", params: Any = None) -> int:
        return int(self.execute(f"SELECT COUNT(*) FROM `{self.table}` WHERE {where}", params)[0][0])

    def wait_done(self, ids: list[int] | None = None, timeout: float = 20.0) -> list[dict]:
        """Wait until the rows (all rows if no ids) are finished; returns them."""
        where = "status NOT IN ('done', 'ignored')"
        params: tuple[Any, ...] = ()
        if ids is not None:
            where += f" AND id IN ({', '.join(['%s'] * len(ids))})"
            params = tuple(ids)
        wait_for(lambda: self.count(where, params) == 0, timeout, f"jobs of {self.table} done")
        if ids is None:
            return self.rows()
        return self.rows(f"id IN ({', '.join(['%s'] * len(ids))})", tuple(ids))

    @contextlib.contextmanager
    def purge_held_back(self, target: str, dead: int) -> Iterator[None]:
        """A transaction left open on the server (a consistent snapshot on a connection
        of its own) stops InnoDB's purge while the block runs; before it, `dead` rows of
        `target` go from waiting to done, so each leaves a dead entry in the waiting part
        of claim_idx that purge cannot remove."""
        holder = self.db.connect()
        try:
            with holder.cursor() as cur:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                cur.execute(f"SELECT COUNT(*) FROM `{self.table}`")
            for start in range(0, dead, 1000):  # 1,000 at a time
                ids = self.insert(target, min(1000, dead - start))
                self.execute(
                    f"UPDATE `{self.table}` SET status = 'done' WHERE id BETWEEN %s AND %s",
                    (ids[0], ids[-1]),
                )
            yield
        finally:
            holder.rollback()
            holder.close()

    def close(self) -> None:
        self.execute(
            f"DROP TABLE IF EXISTS `{self.table}`, `{self.table}_schedules`, `{self.table}_workers`"
        )
        self.conn.close()


@pytest.fixture
def jobs(database: Database) -> Iterator[Jobs]:
    table = Jobs(database, f"jobs_{secrets.token_hex(4)}")
    yield table
    table.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def claimed(worker: Daemon) -> dict[str, int]:
    """The jobs a worker has claimed since it started, by target and by id."""
    return worker.request("status")["claimed"]


def wait_idle(*workers: Daemon) -> None:
    """Until no target of these workers is wanted (their claims found every target dry):
    a poll naming its jobs then takes them by id."""
    for worker in workers:
        wait_for(lambda w=worker: not w.request("status")["wanted"], what="the claims done")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    """A jobd or jobd-master process started by a test."""

    argv: list[str]
    config_path: Path
    address: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    events: str | None = None  # a master's PUB endpoint
    _log: Any = field(default=None, repr=False)
    #: jobd.curve.ClientCurve for a daemon with CURVE keys (readiness checks, request).
    curve: Any = None
    #: Descriptors the daemon inherits beyond 0, 1 and 2.
    pass_fds: tuple[int, ...] = ()

    def start(self, wait: bool = True) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            pass_fds=self.pass_fds,
        )  # fmt: skip
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n{self.log()}")
            try:
                call(self.address, "ping", timeout=0.5, curve=self.curve)
                return True
            except NoAnswer:
                return False

        wait_for(answers, timeout, f"{self.address} to answer")

    def request(self, type_: str, data: dict[str, Any] | None = None, timeout: float = 10.0):
        return call(self.address, type_, data, timeout=timeout, curve=self.curve)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log:
            self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        if self._log:
            self._log.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Every daemon a test starts is stopped at teardown."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


@pytest.fixture
def start_worker(jobs: Jobs, tmp_path: Path, daemons: list[Daemon]) -> Callable[..., Daemon]:
    """start_worker(targets={...}, command="...", **config) -> a running jobd process."""
    counter = iter(range(1000))

    def start(
        targets: dict[str, Any] | None = None,
        command: str = "/bin/true",
        wait: bool = True,
        pass_fds: tuple[int, ...] = (),
        **config: Any,
    ) -> Daemon:
        n = next(counter)
        port = free_port()
        settings: dict[str, Any] = {
            "name": f"w{n}",
            "listen": f"tcp://127.0.0.1:{port}",
            "database": jobs.db.url_string,
            "table": jobs.table,
            "poll_interval": 0,
            "launcher": {"command": command},
            "targets": targets if targets is not None else {"t": 2},
            "log": {"level": "info"},
        }
        settings.update(config)
        return launch(
            tmp_path / settings["name"], "jobd", settings, daemons, wait, pass_fds=pass_fds
        )

    return start


def launch(
    stem: Path,
    module: str,
    settings: dict[str, Any],
    daemons: list[Daemon],
    wait: bool,
    **extra: Any,
) -> Daemon:
    """Write `settings` to STEM.yaml and start `python -m MODULE` with it, logging to
    STEM.log; the daemon is stopped at teardown."""
    path = stem.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(settings))
    daemon = Daemon(
        argv=[sys.executable, "-m", module, "--config", str(path)],
        config_path=path,
        address=settings["listen"],
        log_path=stem.with_suffix(".log"),
        **extra,
    )
    daemons.append(daemon)
    return daemon.start(wait=wait)


@pytest.fixture
def start_master(tmp_path: Path, daemons: list[Daemon]) -> Callable[..., Daemon]:
    """start_master(ping_interval=0.3, **config) -> a running jobd-master process; its
    events endpoint is `daemon.events`.

    A killed master can be started again on the same address with `daemon.start()`."""
    counter = iter(range(1000))

    def start(wait: bool = True, **config: Any) -> Daemon:
        n = next(counter)
        settings: dict[str, Any] = {
            "listen": f"tcp://127.0.0.1:{free_port()}",
            # Its own PUB port: the default 7082 is shared by every master on the host.
            "events": f"tcp://127.0.0.1:{free_port()}",
            "ping_interval": 0.3,
            "log": {"level": "info"},
        }
        settings.update(config)
        return launch(
            tmp_path / f"master{n}", "jobd_master", settings, daemons, wait,
            events=settings["events"] or None,
        )  # fmt: skip

    return start


def jobctl(*args: Any, status: int = 0, input: str | None = None) -> Result:
    """Run jobctl in-process (click's runner), `input` on its stdin; assert its exit
    status."""
    result = CliRunner().invoke(jobctl_main, [str(a) for a in args], input=input)
    assert result.exit_code == status, (
        f"jobctl {' '.join(map(str, args))} exited {result.exit_code}, not {status}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
    )
    return result
