"""Benchmark of one jobd worker against a real MariaDB, with the machine's ceiling
measured in the same run.

    .venv/bin/python bench/bench_worker.py [--jobs 20000] [--concurrency 8] [--userstat]

It needs a MariaDB account that may create databases and users (by default root with no
password at 127.0.0.1:3306, or JOBD_TEST_DATABASE_URL, or --server-url).  It creates a
scratch database with the table of schema.sql and a user of its own for the worker, and
drops all of them at the end.  The workers are real `python -m jobd` processes.

What is measured, in this order:

1. Ceiling, with no worker and no database: this process spawns `/bin/true` --ceiling-jobs
   times with asyncio at the same concurrency, each with stdin from /dev/null, stdout and
   stderr piped and read, in a new session -- what jobd's launcher does for a job.  Python
   3.11's asyncio watches children with a thread per child by default; where the pidfd
   watcher is available it is measured too, and the ceiling is the faster of the two.  Then
   the spawn latency floor: `/bin/date +%s%N` started --latency-jobs times one after the
   other; the latency of one start is the time printed by `date` minus the wall-clock time
   taken just before the spawn.

2. Throughput: a worker with `/bin/true` as launcher, one target with one slot of
   --concurrency, poll_interval 0 and log level info (a job start and finish are logged,
   as in production).  --jobs rows are inserted with the seed's columns (target,
   time_created) in INSERTs of 1,000 rows, then one `poll` is sent and the bench waits until
   no row is left that is not `done`, checking every 50 ms with one COUNT(*).  Jobs/s is
   the number of jobs over the time from sending the poll to seeing all rows done.  Every
   row must end `done`/`ok` with attempts = 1, or the run fails.  The worker's RSS
   (VmRSS of /proc/PID/status) is read once it answers `ping` (idle, before any job) and
   again after all rows are done.

3. SQL statements per job, in the same throughput window (from after the inserts to all
   rows done).  With --userstat (or when the server's `userstat` is already on) the count
   is the worker's own: the change of SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS in
   information_schema.USER_STATISTICS for the worker's database user (every statement it
   sent, BEGIN and COMMIT included).  The server's global counters are always read too:
   the change of Com_select + Com_insert + Com_update + Com_delete + Com_replace +
   Com_begin + Com_commit + Com_rollback + Com_set_option from SHOW GLOBAL STATUS, minus
   the bench's own statements in the window (its COUNT(*) progress queries; the inserts
   come before the window, and SHOW STATUS is not in the sum).  The global figure also
   counts every other client of the server in that window, so it is only exact on a
   server nobody else uses.  --userstat switches `userstat` on for the run and restores
   it afterwards.

4. Latency: a second worker whose launcher is `/bin/date +%s%N` (its stdout is written to
   the row).  --latency-jobs times, one job at a time with the worker idle: take the wall
   clock, INSERT one row (autocommit), send `poll` over a DEALER connection opened before
   the loop, wait until the row is done.  The latency is the time `date` printed minus the
   time taken before the INSERT: insert + poll -> the job's process is running (including
   the exec of /bin/date itself, which the spawn floor of step 1 shows).  The poll's round
   trip is reported too.

The goals are those of issue 6.  Prints a table (figure | this run | goal | ceiling) and
writes everything to bench/results/latest.json (--output).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import yaml

from jobd import __version__
from jobd.client import Client, NoAnswer, call
from jobd.config import DatabaseURL

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = (ROOT / "schema.sql").read_text()
DEFAULT_SERVER = os.environ.get("JOBD_TEST_DATABASE_URL", "mysql://root@127.0.0.1:3306/")
INSERT_BATCH = 1000
COM_COUNTERS = (
    "Com_select", "Com_insert", "Com_update", "Com_delete", "Com_replace",
    "Com_begin", "Com_commit", "Com_rollback", "Com_set_option",
)  # fmt: skip
USER_COUNTERS = ("SELECT_COMMANDS", "UPDATE_COMMANDS", "OTHER_COMMANDS")


# --- database -------------------------------------------------------------------


def connect(url: DatabaseURL, database: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(
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


def global_counters(conn: pymysql.connections.Connection) -> dict[str, int]:
    rows = query(conn, "SHOW GLOBAL STATUS LIKE 'Com\\_%'")
    values = {name: int(value) for name, value in rows}
    return {name: values.get(name, 0) for name in COM_COUNTERS}


def user_counters(conn: pymysql.connections.Connection, user: str) -> dict[str, int] | None:
    columns = ", ".join(USER_COUNTERS)
    rows = query(
        conn, f"SELECT {columns} FROM information_schema.USER_STATISTICS WHERE USER = %s", (user,)
    )
    return dict(zip(USER_COUNTERS, map(int, rows[0]), strict=True)) if rows else None


class Scratch:
    """A scratch database with the jobs table and a user of its own for the workers."""

    def __init__(self, server: DatabaseURL, userstat: bool) -> None:
        self.server = server
        self.admin = connect(server)
        token = secrets.token_hex(3)
        self.database = f"jobd_bench_{os.getpid()}_{token}"
        self.user = f"jobd_bench_{token}"
        self.password = secrets.token_urlsafe(12)
        self.userstat_before: str | None = None
        query(self.admin, f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
        for host in ("127.0.0.1", "localhost"):
            query(
                self.admin, f"CREATE USER '{self.user}'@'{host}' IDENTIFIED BY %s", (self.password,)
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

    @property
    def worker_url(self) -> str:
        host = "127.0.0.1" if self.server.host in ("localhost", "127.0.0.1") else self.server.host
        return f"mysql://{self.user}:{self.password}@{host}:{self.server.port}/{self.database}"

    def close(self) -> None:
        if self.userstat_before is not None:
            query(self.admin, f"SET GLOBAL userstat = {self.userstat_before}")
        self.conn.close()
        query(self.admin, f"DROP DATABASE IF EXISTS `{self.database}`")
        for host in ("127.0.0.1", "localhost"):
            query(self.admin, f"DROP USER IF EXISTS '{self.user}'@'{host}'")
        self.admin.close()


# --- worker processes -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def worker(
    scratch: Scratch, workdir: Path, name: str, command: str, target: str, concurrency: int
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A running `python -m jobd` serving one target; stopped with SIGTERM afterwards."""
    address = f"tcp://127.0.0.1:{free_port()}"
    config = {
        "name": name,
        "listen": address,
        "table": "jobs",
        "poll_interval": 0,
        "launcher": {"command": command},
        "targets": {target: concurrency},
        "log": {"level": "info"},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "JOBD_DATABASE_URL": scratch.worker_url}
    with open(workdir / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobd", "--config", str(path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited {process.returncode}, see {log.name}")
            try:
                call(address, "ping", timeout=0.5)
                break
            except NoAnswer:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name} does not answer, see {log.name}") from None
        yield process, address
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- ceiling --------------------------------------------------------------------


def use_pidfd_watcher() -> bool:
    """Python 3.11 only: watch children with pidfds instead of a thread each (3.12 does by
    default).  Returns False where it is not available."""
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    return True


async def spawn(argv: list[str]) -> bytes:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    stdout, _ = await process.communicate()
    return stdout


async def spawn_ceiling(count: int, concurrency: int, pidfd: bool) -> dict[str, Any] | None:
    if pidfd and not use_pidfd_watcher():
        return None
    queue = iter(range(count))

    async def lane() -> None:
        for _ in queue:
            await spawn(["/bin/true"])

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies = []
    for _ in range(min(count, 200)):
        before = time.time_ns()
        stdout = await spawn(["/bin/date", "+%s%N"])
        latencies.append((int(stdout) - before) / 1e6)
    return {"jobs_per_s": count / elapsed, "seconds": elapsed, "spawn_ms": latencies}


def measure_ceiling(count: int, concurrency: int) -> dict[str, Any]:
    runs = {}
    for watcher, pidfd in (("default", False), ("pidfd", True)):
        result = asyncio.run(spawn_ceiling(count, concurrency, pidfd))
        if result is not None:
            runs[watcher] = result
            print(f"    ceiling ({watcher} child watcher): {result['jobs_per_s']:,.0f} spawns/s")
    best = max(runs, key=lambda k: runs[k]["jobs_per_s"])
    return {
        "jobs": count,
        "watcher": best,
        "jobs_per_s": runs[best]["jobs_per_s"],
        "spawn_latency_ms": percentiles(runs[best]["spawn_ms"]),
        "runs": {k: {"jobs_per_s": v["jobs_per_s"]} for k, v in runs.items()},
    }


# --- phases ---------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": ordered[-1]}


def insert_jobs(conn: pymysql.connections.Connection, target: str, count: int) -> int:
    """The seed's INSERT form, 1,000 rows a statement; returns the number of statements."""
    statements = 0
    now = int(time.time())
    for start in range(0, count, INSERT_BATCH):
        n = min(INSERT_BATCH, count - start)
        sql = "INSERT INTO jobs (target, time_created) VALUES " + ", ".join(["(%s, %s)"] * n)
        query(conn, sql, [target, now] * n)
        statements += 1
    return statements


def throughput(scratch: Scratch, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    conn = scratch.conn
    with worker(scratch, workdir, "bench", "/bin/true", "bench", args.concurrency) as (proc, addr):
        rss_idle = rss_mb(proc.pid)
        print(f"    worker pid {proc.pid} ready, RSS {rss_idle:.1f} MB")
        insert_statements = insert_jobs(conn, "bench", args.jobs)
        print(f"    inserted {args.jobs:,} jobs in {insert_statements} statements")
        global_before = global_counters(conn)
        user_before = user_counters(conn, scratch.user) if scratch.userstat else None
        own = 0
        started = time.perf_counter()
        call(addr, "poll", {"targets": ["bench"]})
        deadline = time.monotonic() + max(120.0, args.jobs / 20)
        while True:
            time.sleep(0.05)
            (left,) = query(conn, "SELECT COUNT(*) FROM jobs WHERE status <> 'done'")[0]
            own += 1
            if left == 0:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited {proc.returncode} with {left} jobs left")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out with {left} jobs left")
        elapsed = time.perf_counter() - started
        global_after = global_counters(conn)
        user_after = user_counters(conn, scratch.user) if scratch.userstat else None
        rss_after = rss_mb(proc.pid)
    bad = query(
        conn, "SELECT COUNT(*) FROM jobs WHERE result <> 'ok' OR result IS NULL OR attempts <> 1"
    )[0][0]
    if bad:
        raise RuntimeError(f"{bad} jobs did not end ok after exactly one start")
    global_delta = {k: global_after[k] - global_before[k] for k in COM_COUNTERS}
    statements: dict[str, Any] = {
        "global_com_delta": global_delta,
        "bench_own_statements": own,
        "global_per_job": (sum(global_delta.values()) - own) / args.jobs,
    }
    if user_before is not None and user_after is not None:
        user_delta = {k: user_after[k] - user_before[k] for k in USER_COUNTERS}
        statements["worker_user_delta"] = user_delta
        statements["worker_per_job"] = sum(user_delta.values()) / args.jobs
    return {
        "jobs": args.jobs,
        "seconds": elapsed,
        "jobs_per_s": args.jobs / elapsed,
        "rss_idle_mb": rss_idle,
        "rss_after_mb": rss_after,
        "sql": statements,
    }


async def latency_loop(conn: pymysql.connections.Connection, address: str, count: int) -> dict:
    starts: list[float] = []
    polls: list[float] = []
    async with Client(address, timeout=10) as client:
        for _ in range(count):
            before = time.time_ns()
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO jobs (target, time_created) VALUES ('lat', UNIX_TIMESTAMP())"
                )
                job_id = cur.lastrowid
            poll_sent = time.perf_counter()
            await client.request("poll", {"targets": ["lat"]})
            polls.append((time.perf_counter() - poll_sent) * 1000)
            deadline = time.monotonic() + 10
            while True:
                rows = query(
                    conn, "SELECT status, result, stdout FROM jobs WHERE id = %s", (job_id,)
                )
                status, result, stdout = rows[0]
                if status == "done":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"latency job {job_id} not done after 10 s ({status})")
                await asyncio.sleep(0.002)
            if result != "ok":
                raise RuntimeError(f"latency job {job_id} failed: {stdout!r}")
            starts.append((int(stdout) - before) / 1e6)
            await asyncio.sleep(0.01)  # the worker is idle again before the next job
    return {"start_ms": percentiles(starts), "poll_round_trip_ms": percentiles(polls)}


def latency(scratch: Scratch, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = "/bin/date +%s%N"
    with worker(scratch, workdir, "bench-lat", command, "lat", args.concurrency) as (_, address):
        result = asyncio.run(latency_loop(scratch.conn, address, args.latency_jobs))
    return {"jobs": args.latency_jobs, **result}


# --- report ---------------------------------------------------------------------


def machine(conn: pymysql.connections.Connection) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mariadb": query(conn, "SELECT VERSION()")[0][0],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "jobd": __version__,
        "commit": commit or None,
    }


def table(results: dict[str, Any]) -> str:
    t, lat, ceil = results["throughput"], results["latency"], results["ceiling"]
    sql = t["sql"]
    per_job = sql.get("worker_per_job")
    sql_note = "worker's own" if per_job is not None else "global counters"
    if per_job is None:
        per_job = sql["global_per_job"]
    n, ln = t["jobs"], lat["jobs"]
    spawn = ceil["spawn_latency_ms"]
    rows = [
        ("figure", "this run", "goal", "ceiling"),
        (
            f"throughput, {n:,} x /bin/true, concurrency {results['concurrency']} (jobs/s)",
            f"{t['jobs_per_s']:,.0f}",
            ">= 1,000",
            f"{ceil['jobs_per_s']:,.0f}",
        ),
        ("throughput / ceiling", f"{results['ratio'] * 100:.0f} %", ">= 80 %", "100 %"),
        (
            f"insert + poll -> launcher start, p50 over {ln} (ms)",
            f"{lat['start_ms']['p50']:.2f}",
            "<= 2",
            f"{spawn['p50']:.2f} (spawn alone)",
        ),
        (
            f"insert + poll -> launcher start, p99 over {ln} (ms)",
            f"{lat['start_ms']['p99']:.2f}",
            "<= 10 (through the master)",
            f"{spawn['p99']:.2f} (spawn alone)",
        ),
        ("poll round trip, p50 (ms)", f"{lat['poll_round_trip_ms']['p50']:.2f}", "-", "-"),
        ("worker RSS idle (MB)", f"{t['rss_idle_mb']:.1f}", "<= 40", "-"),
        (f"worker RSS after {n:,} jobs (MB)", f"{t['rss_after_mb']:.1f}", "<= 45", "-"),
        (f"SQL statements per job ({sql_note})", f"{per_job:.2f}", "<= 3", "-"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs of the throughput run")
    parser.add_argument("--concurrency", type=int, default=8, help="slot concurrency")
    parser.add_argument(
        "--ceiling-jobs", type=int, default=None, help="spawns of the ceiling (default: --jobs)"
    )
    parser.add_argument("--latency-jobs", type=int, default=200, help="one-at-a-time jobs")
    parser.add_argument("--server-url", default=DEFAULT_SERVER, help="mysql://user:pass@host:port/")
    parser.add_argument(
        "--userstat",
        action="store_true",
        help="switch the server's userstat on for the run to count the worker's own statements",
    )
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    if args.jobs < 1 or args.concurrency < 1 or args.latency_jobs < 2:
        parser.error("--jobs and --concurrency must be >= 1, --latency-jobs >= 2")
    ceiling_jobs = args.ceiling_jobs or args.jobs

    server = DatabaseURL.parse(args.server_url.rstrip("/") + "/mysql")
    load_before = os.getloadavg()
    print(f"==> ceiling: {ceiling_jobs:,} spawns of /bin/true, concurrency {args.concurrency}")
    ceiling = measure_ceiling(ceiling_jobs, args.concurrency)
    scratch = Scratch(server, args.userstat)
    try:
        print(f"==> scratch database {scratch.database}")
        with tempfile.TemporaryDirectory(prefix="jobd-bench-") as tmp:
            workdir = Path(tmp)
            print(f"==> throughput: {args.jobs:,} jobs, concurrency {args.concurrency}")
            through = throughput(scratch, workdir, args)
            print(f"    {through['jobs_per_s']:,.0f} jobs/s ({through['seconds']:.2f} s)")
            print(f"==> latency: {args.latency_jobs} jobs one at a time")
            lat = latency(scratch, workdir, args)
        info = machine(scratch.conn)
    finally:
        scratch.close()
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "concurrency": args.concurrency,
        "throughput": through,
        "ceiling": ceiling,
        "ratio": through["jobs_per_s"] / ceiling["jobs_per_s"],
        "latency": lat,
        # Other work on the machine skews every figure: the 1-minute load before and after.
        "loadavg_1m": [load_before[0], os.getloadavg()[0]],
    }
    results["table"] = table(results)
    print()
    print(results["table"])
    print()
    m = info
    print(f"machine: {m['nproc']} cores, {m['cpu']}, MariaDB {m['mariadb']}, Python {m['python']}")
    print("load average (1 min) before and after: {:.2f}, {:.2f}".format(*results["loadavg_1m"]))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
