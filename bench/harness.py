"""What every part of the benchmark shares: the scratch database, the daemons it starts
(real `jobd` and `jobd-master` processes), RSS readings, percentiles and the machine.

Nothing here measures anything; bench_worker.py and bench_scale.py do, and bench.py runs
them and prints the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import yaml

from jobd import __version__
from jobd.client import NoAnswer, call
from jobd.config import DatabaseURL, MasterConfig

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = (ROOT / "schema.sql").read_text()
DEFAULT_SERVER = os.environ.get("JOBD_TEST_DATABASE_URL", "mysql://root@127.0.0.1:3306/")
INSERT_BATCH = 1000
#: Seconds a daemon may take to answer its first ping (two busy cores, ten starting at once).
START_TIMEOUT = 60.0
#: InnoDB history list length under which the server counts as settled between phases.
SETTLED_HISTORY = 100


# --- database -------------------------------------------------------------------


def connect(
    url: DatabaseURL, database: str | None = None, multi_statements: bool = False
) -> pymysql.connections.Connection:
    return pymysql.connect(
        client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS if multi_statements else 0,
        host=url.host,
        port=url.port,
        user=url.user,
        password=url.password,
        database=database,
        autocommit=True,
        charset="utf8mb4",
    )


def query(conn: pymysql.connections.Connection, sql: str, params: Any = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


class Scratch:
    """A scratch database with the jobs table and a user of its own for the workers.
    `close` drops both (and restores `userstat` if it was switched on for the run)."""

    def __init__(self, server: DatabaseURL, userstat: bool) -> None:
        self.server = server
        self.admin = connect(server)
        token = secrets.token_hex(3)
        self.database = f"jobd_bench_{os.getpid()}_{token}"
        self.user = f"jobd_bench_{token}"
        self.password = secrets.token_urlsafe(12)
        self.userstat_before: str | None = None
        self.conn: pymysql.connections.Connection | None = None
        try:
            query(self.admin, f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
            for host in ("127.0.0.1", "localhost"):
                query(
                    self.admin,
                    f"CREATE USER '{self.user}'@'{host}' IDENTIFIED BY %s",
                    (self.password,),
                )
                query(self.admin, f"GRANT ALL ON `{self.database}`.* TO '{self.user}'@'{host}'")
            self.conn = connect(server, self.database)
            for statement in SCHEMA.split(";"):  # the jobs table and its schedules table
                if statement.strip():
                    query(self.conn, statement)
            (value,) = query(self.admin, "SELECT @@GLOBAL.userstat")[0]
            if userstat and not int(value):
                self.userstat_before = "OFF"
                query(self.admin, "SET GLOBAL userstat = ON")
            self.userstat = bool(int(value)) or userstat
        except BaseException:
            self.close()
            raise

    @property
    def worker_url(self) -> str:
        host = "127.0.0.1" if self.server.host in ("localhost", "127.0.0.1") else self.server.host
        return f"mysql://{self.user}:{self.password}@{host}:{self.server.port}/{self.database}"

    def insert(self, target: str, count: int) -> tuple[int, int]:
        """`count` rows with the seed's columns (target, time_created), 1,000 a statement;
        returns (first id, number of statements).  One connection, autocommit: the ids of
        one multi-row INSERT are consecutive."""
        assert self.conn is not None
        statements, first = 0, 0
        now = int(time.time())
        for start in range(0, count, INSERT_BATCH):
            n = min(INSERT_BATCH, count - start)
            sql = "INSERT INTO jobs (target, time_created) VALUES " + ", ".join(["(%s, %s)"] * n)
            with self.conn.cursor() as cur:
                cur.execute(sql, [target, now] * n)
                first = first or cur.lastrowid
            statements += 1
        return first, statements

    def left(self, target: str) -> int:
        """Rows of the target that are not finished (claim_idx answers it without a scan
        of the finished rows)."""
        assert self.conn is not None
        sql = (
            "SELECT COUNT(*) FROM jobs WHERE status IN ('waiting', 'accepted', 'running')"
            " AND target = %s"
        )
        return query(self.conn, sql, (target,))[0][0]

    def any_left(self, target: str) -> int:
        """1 if a row of the target is not finished yet, else 0 (one index entry read)."""
        assert self.conn is not None
        sql = (
            "SELECT 1 FROM jobs WHERE status IN ('waiting', 'accepted', 'running')"
            " AND target = %s LIMIT 1"
        )
        return len(query(self.conn, sql, (target,)))

    def not_ok(self, target: str) -> int:
        """Rows of the target that did not end done/ok after exactly one start."""
        assert self.conn is not None
        sql = (
            "SELECT COUNT(*) FROM jobs WHERE target = %s AND NOT (status = 'done'"
            " AND result <=> 'ok' AND attempts = 1)"
        )
        return query(self.conn, sql, (target,))[0][0]

    def close(self) -> None:
        with contextlib.suppress(pymysql.MySQLError):
            if self.userstat_before is not None:
                query(self.admin, f"SET GLOBAL userstat = {self.userstat_before}")
        if self.conn is not None:
            with contextlib.suppress(pymysql.MySQLError):
                self.conn.close()
        query(self.admin, f"DROP DATABASE IF EXISTS `{self.database}`")
        for host in ("127.0.0.1", "localhost"):
            query(self.admin, f"DROP USER IF EXISTS '{self.user}'@'{host}'")
        self.admin.close()


def wait_drained(
    scratch: Scratch,
    target: str,
    processes: list[subprocess.Popen[bytes]],
    timeout: float,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """Wait until no row of `target` is left unfinished, checking every 50 ms whether one
    is (a query that reads one index entry: counting them all 20 times a second would
    take the database's CPU from the daemons measured); with `progress`, every tenth check
    counts them instead and calls `progress(left)`.  Returns (the monotonic time the drain
    was seen, the number of queries this sent)."""
    deadline = time.monotonic() + timeout
    queries = 0
    while True:
        time.sleep(0.05)
        queries += 1
        if progress is not None and queries % 10 == 0:
            left = scratch.left(target)
            progress(left)
        else:
            left = scratch.any_left(target)
        if left == 0:
            drained = time.monotonic()
            if progress is not None:
                progress(0)
            return drained, queries
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited {process.returncode} with {left} jobs left")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out with {left} jobs of {target} left")


# --- processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """VmRSS of a process, in MB (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def imports_rss_mb(module: str) -> float:
    """RSS of a Python process that has imported `module` and nothing else: the floor
    under a daemon's footprint (the interpreter and its libraries, before any work)."""
    code = (
        f"import {module}\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS:'): print(int(line.split()[1]) / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(out.stdout)


@dataclasses.dataclass
class Daemon:
    """A `jobd` or `jobd-master` process of the benchmark."""

    name: str
    argv: list[str]
    address: str
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=ROOT,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.process.returncode}, see {self.log_path}"
                )
            try:
                call(self.address, "ping", timeout=0.5)
                return
            except NoAnswer:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} does not answer, see {self.log_path}"
                    ) from None

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 40.0) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def running(daemons: list[Daemon]) -> Iterator[list[Daemon]]:
    """Start the daemons together, wait until each answers `ping`, and stop them all at
    the end (SIGTERM to all, then wait for each; SIGKILL after 40 s)."""
    try:
        for daemon in daemons:
            daemon.start()
        for daemon in daemons:
            daemon.wait_ready()
        yield daemons
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            daemon.wait_stopped()


def worker_daemon(
    scratch: Scratch,
    workdir: Path,
    name: str,
    command: str,
    targets: dict[str, int],
    master: str | None = None,
    code: Path | None = None,
) -> Daemon:
    """A `python -m jobd` worker as in production (log level info) except that it never
    polls by itself (poll_interval 0): every claim of a run is one the benchmark asked
    for.  Its database password travels in JOBD_DATABASE_URL, as docs/configuration.md advises.
    `code`: a checkout whose jobd package it runs instead of this one's (--compare)."""
    address = f"tcp://127.0.0.1:{free_port()}"
    config: dict[str, Any] = {
        "name": name,
        "listen": address,
        "table": "jobs",
        "poll_interval": 0,
        "launcher": {"command": command},
        "targets": targets,
        "log": {"level": "info"},
    }
    if master is not None:
        config["master"] = master
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "JOBD_DATABASE_URL": scratch.worker_url}
    argv = [sys.executable, "-m", "jobd", "--config", str(path)]
    if code is not None:
        # Its package ahead of this checkout's (the daemons run in ROOT), the same
        # interpreter and installed dependencies.
        run = (
            f"import runpy, sys; sys.path.insert(0, {str(code)!r});"
            " runpy.run_module('jobd', run_name='__main__', alter_sys=True)"
        )
        argv = [sys.executable, "-c", run, "--config", str(path)]
    return Daemon(name, argv, address, workdir / f"{name}.log", env)


def master_daemon(workdir: Path, name: str = "master", ping_interval: float = 5.0) -> Daemon:
    """A `python -m jobd_master` with the production defaults (ping interval 5 s, log level
    info), on free ports; no database, so no scheduler."""
    address = f"tcp://127.0.0.1:{free_port()}"
    config: dict[str, Any] = {
        "listen": address,
        "ping_interval": ping_interval,
        "log": {"level": "info"},
    }
    if "events" in {f.name for f in dataclasses.fields(MasterConfig)}:
        # Job events are published as in production, on a port of its own: the default
        # (7082) may be taken by another master on this host.
        config["events"] = f"tcp://127.0.0.1:{free_port()}"
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "JOBD_DATABASE_URL"}
    argv = [sys.executable, "-m", "jobd_master", "--config", str(path)]
    return Daemon(name, argv, address, workdir / f"{name}.log", env)


def wait_registered(master: Daemon, names: set[str], timeout: float = START_TIMEOUT) -> None:
    """Wait until every worker of `names` is in the master's registry."""
    deadline = time.monotonic() + timeout
    while True:
        registered = set(call(master.address, "status", timeout=5)["workers"])
        if names <= registered:
            return
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(names - registered))
            raise RuntimeError(f"not registered with {master.name} after {timeout:g} s: {missing}")
        time.sleep(0.1)


# --- figures --------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": ordered[-1]}


def loadavg() -> float:
    return os.getloadavg()[0]


def settle(scratch: Scratch, timeout: float = 120.0) -> tuple[float, int]:
    """Wait until the server has purged the old row versions that the previous phase left
    (InnoDB's history list is short again), so that a phase measures the daemons and not
    the database catching up on its predecessor's work.  Returns (seconds waited, the
    history list length then)."""
    started = time.monotonic()
    while True:
        ((_, value),) = query(scratch.admin, "SHOW GLOBAL STATUS LIKE 'Innodb_history_list_length'")
        if int(value) < SETTLED_HISTORY or time.monotonic() - started > timeout:
            return time.monotonic() - started, int(value)
        time.sleep(0.2)


def commit_of(checkout: Path) -> str:
    """The short commit of a checkout ("" when it is not a git checkout)."""
    return subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip


def machine(scratch: Scratch) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    commit = commit_of(ROOT)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "jobd",
         "jobd_master"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": memory,
        "mariadb": query(scratch.admin, "SELECT VERSION()")[0][0],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "jobd": __version__,
        "commit": commit or None,
        # The daemons ran from the working tree: say when it differed from the commit.
        "uncommitted_changes": bool(dirty),
    }


# --- profiling ------------------------------------------------------------------


class Profiler:
    """`py-spy record` of one process while the benchmark measures it (--profile): raw
    collapsed stacks to `path`, and a summary of where the process spent its CPU time.
    py-spy samples without stopping the process (--nonblocking), but it still takes CPU
    from a 2-core machine: the figures of a profiled run are not comparable."""

    def __init__(self, pid: int, path: Path, rate: int = 200) -> None:
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None
        py_spy = Path(sys.executable).with_name("py-spy")
        if not py_spy.exists():
            found = shutil.which("py-spy")
            if found is None:
                print("    (py-spy not found: no profile)")
                return
            py_spy = Path(found)
        argv = [
            str(py_spy), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
            "--nonblocking", "--output", str(path),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(0.3)  # attached before the measured work begins

    def stop(self, top: int = 12) -> dict[str, Any] | None:
        """Stop sampling (SIGINT makes py-spy write its file) and summarize: the functions
        the samples were in (self) and the functions on the stack (total), in % of samples."""
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            return None
        if not self.path.exists():
            print(f"    (py-spy wrote no profile: {err.decode(errors='replace').strip()[-200:]})")
            return None
        own: dict[str, int] = {}
        total: dict[str, int] = {}
        samples = 0
        for line in self.path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            samples += n
            frames = [_frame(f) for f in stack.split(";")]
            own[frames[-1]] = own.get(frames[-1], 0) + n
            # Total: the frames of the callback or task the event loop is running (below
            # its last Handle._run); the loop and the entry point above say nothing, and a
            # sample outside any callback (the loop's own select) counts for its leaf only.
            if LOOP_FRAME in frames[:-1]:
                frames = frames[len(frames) - frames[::-1].index(LOOP_FRAME) :]
            else:
                frames = frames[-1:]
            for frame in set(frames):
                total[frame] = total.get(frame, 0) + n

        def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
            best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
            return [(name, round(100 * n / max(samples, 1), 1)) for name, n in best]

        return {"file": str(self.path), "samples": samples, "self": ranked(own),
                "total": ranked(total)}  # fmt: skip


LOOP_FRAME = "Handle._run (events.py)"


def _frame(frame: str) -> str:
    """`function (path/to/module.py:123)` -> `function (module.py)`: lines apart, one entry."""
    name, _, where = frame.partition(" (")
    module = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(module).name})" if module else name
