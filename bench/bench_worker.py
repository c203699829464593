"""The worker's part of the benchmark: the machine's ceiling, throughput, SQL statements
per job, the footprint over a long run (soak), and dispatch latency, straight to the
worker and through jobd-master.  Run it through bench.py, which prints the table.

1. Ceiling, with no worker and no database: this process spawns `/bin/true` --ceiling-jobs
   times at --concurrency, each with stdin from /dev/null, stdout and stderr piped and
   read, in a new session, through each of three spawn paths: asyncio's
   `create_subprocess_exec` with Python 3.11's default child watcher (a thread per child),
   the same with the pidfd watcher, and jobd's own launcher (`jobd.worker.launcher.Launcher`:
   posix_spawn, pipes read by the event loop, a pidfd) with no database, no claims and no
   logging around it.  The ceiling is the fastest of the three; the faster asyncio figure
   is kept as well (it is the yardstick the issue names).  Then the spawn latency floor,
   through the fastest path: `/bin/date +%s%N` started 200 times one after the other; the
   latency of one start is the time printed by `date` minus the wall-clock time taken just
   before the spawn.  Last, the ceiling of the drain's launcher (see bench_scale.py): the
   same spawn loop with that command, at the drain's total concurrency, fastest path.

2. Throughput: a worker with `/bin/true` as launcher, one target with one slot of
   --concurrency, poll_interval 0 and log level info (a job start and finish are logged,
   as in production).  --jobs rows are inserted with the seed's columns (target,
   time_created) in INSERTs of 1,000 rows, then one `poll` is sent and the bench waits until
   no row is left unfinished, checking every 50 ms (one indexed `LIMIT 1` query; a COUNT(*)
   every 0.5 s for the RSS marks).  Jobs/s is the number
   of jobs over the time from sending the poll to seeing all rows done.

   The CPU time of the run is read too (/proc/PID/stat, user + system): the worker's
   own, that of the job processes it reaped, and the database server's when it runs on
   this host (its pid file readable); and, for the ceilings around the run, this
   process's and its spawned processes' through jobd's launcher (getrusage), per spawn.

3. SQL statements per job, in the same throughput window.  With --userstat (or when the
   server's `userstat` is already on) the count is the worker's own: the change of
   SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS in information_schema.USER_STATISTICS
   for the worker's database user (every statement it sent, BEGIN and COMMIT included).
   The server's global counters are always read too: the change of Com_select + Com_insert
   + Com_update + Com_delete + Com_replace + Com_begin + Com_commit + Com_rollback +
   Com_set_option from SHOW GLOBAL STATUS, minus the bench's own queries in the
   window.  The global figure also counts every other client of the server, so it is only
   exact on a server nobody else uses.

4. Footprint: the same worker's RSS (VmRSS) once it answers `ping` and has been idle for a
   second (idle), and every --soak-every jobs up to --soak-jobs in all: during the
   throughput run when a COUNT(*) shows another --soak-every jobs done, then in batches
   of --soak-every rows (insert, poll, wait until done, read the RSS).  The trend is the
   least-squares slope of the samples of the second half of the run, in MB per 10,000
   jobs; flat means no leak.  Every job of the worker must end done/ok after exactly one
   start, or the run fails.  The floor is a Python process that has only imported the
   worker's entry module (`jobd.worker.cli`).

5. Latency: jobd-master, and a worker registered with it whose launcher is
   `/bin/date +%s%N` (its stdout is written to the row).  6 x --latency-jobs jobs, one at
   a time with the worker idle, taking six ways in turn: take the wall clock, INSERT one
   row (autocommit), then either send `poll` straight to the worker or `poke` to the
   master (each over a DEALER connection of jobd.client opened before the loop) and wait
   until the row is done (read first 10 ms after the reply, so that the benchmark's own
   queries do not compete with what they time), or -- the floor -- run the worker's steps
   here with no daemon: the statements of a worker's claim (over a connection set up like
   the worker's) on that row, then /bin/date through jobd's launcher.  Each of the three
   twice: naming the job's id (`ids`, as jobd's own client pokes; the worker claims the
   row by id, and the floor runs that claim's one round trip) and by target only (the
   usual claim, and its two round trips in the floor).  The latency is the time `date`
   printed minus the time taken before the INSERT: insert + poll (or poke) -> the job's
   process is running, including the exec of /bin/date itself, which the spawn floor of
   step 1 shows.  Taking them in turn gives them the same machine: each floor is what no
   daemon can go below with that claim, here and now.  The round trips of the poll and
   of the poke are reported too, and with --userstat the worker's SQL statements of each
   job (read after each job of the worker and master paths), per path.

   With --compare DIR (a checkout of another commit, e.g. `git worktree add ../other
   HEAD~1`), a second worker runs that checkout's jobd package (same interpreter, same
   dependencies), registered with the same master for a target of its own, and two more
   ways join the turn: straight to it and through the master, naming the job when that
   build takes ids (jobd 0.2 or newer, by its `ping`), else by target.  The host's speed
   drifts from one run to the next, far more than most changes move the latency; taken in
   turn, both builds meet the same machine, job after job.  The two builds swap places
   every other round, so each follows the floor as often: the step before a job moves
   its start (bench/README.md has what an A/A run of two copies of one build showed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import resource
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pymysql
from harness import (
    Profiler,
    Scratch,
    commit_of,
    connect,
    master_daemon,
    percentiles,
    query,
    rss_mb,
    running,
    settle,
    wait_drained,
    wait_registered,
    worker_daemon,
)

from jobd.client import Client, call
from jobd.config import LauncherConfig
from jobd.jobs import Job, Outcome
from jobd.store.jobstore import Queries
from jobd.wire.protocol import NAMED_IDS_SINCE, version_at_least
from jobd.worker.launcher import Launcher
from jobd.worker.leftovers import prepare_worker_process

COM_COUNTERS = (
    "Com_select", "Com_insert", "Com_update", "Com_delete", "Com_replace",
    "Com_begin", "Com_commit", "Com_rollback", "Com_set_option",
)  # fmt: skip
USER_COUNTERS = ("SELECT_COMMANDS", "UPDATE_COMMANDS", "OTHER_COMMANDS")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def reset_child_watcher() -> None:
    """Back to asyncio's default watcher (the pidfd one is tied to a loop that is gone)."""
    if sys.version_info < (3, 12):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(None)  # type: ignore[arg-type]


async def spawn_asyncio(argv: list[str]) -> bytes:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    stdout, _ = await process.communicate()
    return stdout


def jobd_spawner() -> Callable[[list[str]], Awaitable[bytes]]:
    """jobd's own spawn path with nothing else around it: `jobd.worker.launcher.Launcher` (what a
    worker runs for each job), here with no database, no claims and no logging."""
    prepare_worker_process()  # as the worker does before its first job (stdin: /dev/null)
    launchers: dict[str, Launcher] = {}
    ids = itertools.count(1)

    async def spawn(words: list[str]) -> bytes:
        command = shlex.join(words)
        launcher = launchers.get(command)
        if launcher is None:
            launcher = launchers[command] = Launcher(
                LauncherConfig(command), 65536, "bench", "bench-ceiling"
            )
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        launcher.start(Job(next(ids), "bench", "default"), done.set_result)
        outcome = await done
        if outcome.result != "ok":
            raise RuntimeError(f"{command}: {outcome.describe()}: {outcome.stderr}")
        return outcome.stdout.encode()

    return spawn


#: The spawn paths of the ceiling: asyncio's, with Python 3.11's default child watcher
#: (a thread per child) and with the pidfd watcher, and jobd's own (posix_spawn).
SPAWN_PATHS = ("asyncio", "asyncio-pidfd", "jobd")


def spawner(path: str) -> Callable[[list[str]], Awaitable[bytes]] | None:
    """The spawn function of a path, set up in the running loop; None if unavailable."""
    if path == "jobd":
        return jobd_spawner()
    if path == "asyncio-pidfd" and not use_pidfd_watcher():
        return None
    return spawn_asyncio


async def spawn_loop(path: str, argv: list[str], count: int, concurrency: int) -> float | None:
    """Spawns per second of `argv` (`{id}` replaced by 0, 1, ...) through one spawn path,
    or None when that path is not available here."""
    spawn = spawner(path)
    if spawn is None:
        return None
    queue = iter(range(count))

    async def lane() -> None:
        for n in queue:
            await spawn([word.replace("{id}", str(n)) for word in argv])

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def spawn_latencies(path: str, count: int) -> list[float]:
    spawn = spawner(path)
    assert spawn is not None
    latencies = []
    for _ in range(count):
        before = time.time_ns()
        stdout = await spawn(["/bin/date", "+%s%N"])
        latencies.append((int(stdout) - before) / 1e6)
    return latencies


def spawn_rates(
    paths: tuple[str, ...],
    count: int,
    concurrency: int,
    cpu: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """Spawns per second of /bin/true through each of these paths that is available; with
    `cpu`, also the CPU time a spawn cost, ms: this process's (`spawner`) and the spawned
    processes' (`processes`)."""
    runs: dict[str, float] = {}
    try:
        for path in paths:
            before = own_cpu()
            rate = asyncio.run(spawn_loop(path, ["/bin/true"], count, concurrency))
            after = own_cpu()
            reset_child_watcher()
            if rate is not None:
                runs[path] = rate
                if cpu is not None:
                    cpu[path] = {
                        "spawner": (after[0] - before[0]) / count * 1000,
                        "processes": (after[1] - before[1]) / count * 1000,
                    }
    finally:
        reset_child_watcher()
    return runs


# --- CPU time ---------------------------------------------------------------------


def own_cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its children it has reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of another process, and of its children it has reaped,
    from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) / CLOCK_TICKS for f in fields[11:15])
    return utime + stime, cutime + cstime


def server_pid(scratch: Scratch) -> int | None:
    """The database server's pid, when it runs on this host and its pid file is readable
    (else its CPU time is not reported)."""
    if scratch.server.host not in ("127.0.0.1", "localhost", "::1"):
        return None
    (pid_file,) = query(scratch.admin, "SELECT @@GLOBAL.pid_file")[0]
    try:
        pid = int(Path(pid_file).read_text().split()[0])
        process_cpu(pid)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def ceilings(runs: dict[str, float]) -> dict[str, float]:
    """The ceiling (the fastest path) and asyncio's (the faster of its two watchers)."""
    return {
        "jobs_per_s": max(runs.values()),
        "asyncio_jobs_per_s": max(v for k, v in runs.items() if k.startswith("asyncio")),
    }


def around_rates(
    args: argparse.Namespace, cpu: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """The ceilings taken around the throughput run: jobd's path and asyncio's faster one
    (with the pidfd watcher, or the default one where there is none)."""
    runs = spawn_rates(("asyncio-pidfd", "jobd"), args.ceiling_jobs, args.concurrency, cpu)
    if "asyncio-pidfd" not in runs:
        runs |= spawn_rates(("asyncio",), args.ceiling_jobs, args.concurrency)
    return runs


def measure_ceiling(
    count: int, concurrency: int, drain_argv: list[str], drain_count: int, drain_concurrency: int
) -> dict[str, Any]:
    """The ceiling is the fastest of the spawn paths: what the machine allows a Python
    process that does nothing but spawn.  The issue's own yardstick, asyncio, is kept as
    `asyncio_jobs_per_s` (the faster of its two watchers)."""
    runs = spawn_rates(SPAWN_PATHS, count, concurrency)
    for path, rate in runs.items():
        print(f"    ceiling ({path}): {rate:,.0f} spawns/s")
    try:
        best = max(runs, key=runs.__getitem__)
        latency = asyncio.run(spawn_latencies(best, 200))
        drain = asyncio.run(spawn_loop(best, drain_argv, drain_count, drain_concurrency))
        assert drain is not None
        print(f"    spawn alone ({best}) p50 {statistics.median(latency):.2f} ms")
        print(
            f"    drain launcher, concurrency {drain_concurrency}: {drain:,.0f} spawns/s"
            f" ({drain_count:,} spawns)"
        )
    finally:
        reset_child_watcher()
    return {
        "jobs": count,
        "path": best,
        **ceilings(runs),
        "spawn_latency_ms": percentiles(latency),
        "runs": {k: {"jobs_per_s": v} for k, v in runs.items()},
        "drain_launcher": {
            "argv": drain_argv,
            "spawns": drain_count,
            "concurrency": drain_concurrency,
            "jobs_per_s": drain,
        },
    }


# --- throughput, SQL, footprint ------------------------------------------------------


def trend(samples: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS over jobs in the second half of the run, MB per 10,000
    jobs (0 with fewer than two samples there)."""
    last = samples[-1][0]
    half = [(jobs, mb) for jobs, mb in samples if jobs >= last / 2]
    if len(half) < 2:
        return 0.0
    slope, _ = statistics.linear_regression([j for j, _ in half], [m for _, m in half])
    return slope * 10_000


def worker_run(scratch: Scratch, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Throughput and SQL per job over the first --jobs, then the soak; see the docstring."""
    conn = scratch.conn
    assert conn is not None
    target = "bench"
    every = args.soak_every
    total = max(args.jobs, args.soak_jobs)
    daemon = worker_daemon(scratch, workdir, "bench", "/bin/true", {target: args.concurrency})
    with running([daemon]):
        pid, processes = daemon.pid, [daemon.process]
        time.sleep(1.0)
        rss_idle = rss_mb(pid)
        samples: list[tuple[int, float]] = [(0, rss_idle)]
        print(f"    worker pid {pid} ready, RSS {rss_idle:.1f} MB")
        cpu_around: dict[str, dict[str, dict[str, float]]] = {"before": {}, "after": {}}
        around = {"before": around_rates(args, cpu_around["before"])}
        database = server_pid(scratch)
        _, insert_statements = scratch.insert(target, args.jobs)
        print(f"    inserted {args.jobs:,} jobs in {insert_statements} statements")
        marks = itertools.count(every, every)
        mark = next(marks)

        def progress(left: int) -> None:
            nonlocal mark
            done = args.jobs - left
            if done >= mark:
                samples.append((done, rss_mb(pid)))
                while mark <= done:
                    mark = next(marks)

        global_before = global_counters(conn)
        user_before = user_counters(conn, scratch.user) if scratch.userstat else None
        path = args.profile_dir / "profile-worker.txt"
        profiler = Profiler(pid, path) if args.profile else None
        cpu_before = process_cpu(pid), process_cpu(database) if database else None
        started = time.monotonic()
        call(daemon.address, "poll", {"targets": [target]})
        ended, own = wait_drained(scratch, target, processes, max(120.0, args.jobs / 20), progress)
        elapsed = ended - started
        cpu_after = process_cpu(pid), process_cpu(database) if database else None
        profile = profiler.stop() if profiler is not None else None
        global_after = global_counters(conn)
        user_after = user_counters(conn, scratch.user) if scratch.userstat else None
        rss_after_throughput = rss_mb(pid)
        print(f"    {args.jobs / elapsed:,.0f} jobs/s ({elapsed:.2f} s)")
        settle(scratch)  # the server's purge of this run is not the next figure's load
        around["after"] = around_rates(args, cpu_around["after"])
        for when, runs in around.items():
            rates = ", ".join(f"{path} {rate:,.0f}" for path, rate in runs.items())
            print(f"    ceiling {when} the run (spawns/s): {rates}")
        done = args.jobs
        while done < total:
            n = min(mark - done, total - done)
            scratch.insert(target, n)
            call(daemon.address, "poll", {"targets": [target]})
            wait_drained(scratch, target, processes, max(120.0, n / 20))
            done += n
            samples.append((done, rss_mb(pid)))
            print(f"    soak: {done:,} jobs, RSS {samples[-1][1]:.1f} MB")
            if done >= mark:
                mark = next(marks)
        rss_end = rss_mb(pid)
    bad = scratch.not_ok(target)
    if bad:
        raise RuntimeError(f"{bad} jobs did not end done/ok after exactly one start")
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
        "throughput": {
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "seconds": elapsed,
            "jobs_per_s": args.jobs / elapsed,
            "rss_after_mb": rss_after_throughput,
            # The spawn ceilings right before and right after the run, and their means:
            # the machine's speed drifts over minutes, and so would a ceiling taken earlier.
            "ceiling_around": {
                **around,
                **{
                    key: statistics.mean(ceilings(runs)[key] for runs in around.values())
                    for key in ("jobs_per_s", "asyncio_jobs_per_s")
                },
            },
            "profile": profile,
            "cpu_ms_per_job": cpu_per_job(cpu_before, cpu_after, args.jobs),
            # jobd's launcher alone, around the run (means): what a spawn costs it.
            "ceiling_cpu_ms_per_spawn": {
                key: statistics.mean(cpu[key] for cpu in (c["jobd"] for c in cpu_around.values()))
                for key in ("spawner", "processes")
            },
        },
        "sql": statements,
        "footprint": {
            "jobs": total,
            "rss_idle_mb": rss_idle,
            "rss_end_mb": rss_end,
            "samples": [{"jobs": jobs, "rss_mb": mb} for jobs, mb in samples],
            "trend_mb_per_10k": trend(samples),
        },
    }


def cpu_per_job(
    before: tuple[tuple[float, float], tuple[float, float] | None],
    after: tuple[tuple[float, float], tuple[float, float] | None],
    jobs: int,
) -> dict[str, float]:
    """CPU ms per job of the throughput run: the worker's own, its jobs' processes' (the
    children it reaped), and the database server's (with the benchmark's few queries)."""
    ms = 1000 / jobs
    cpu = {
        "worker": (after[0][0] - before[0][0]) * ms,
        "processes": (after[0][1] - before[0][1]) * ms,
    }
    if before[1] is not None and after[1] is not None:
        cpu["database"] = (after[1][0] - before[1][0]) * ms
    return cpu


# --- latency --------------------------------------------------------------------


#: What a worker's claim of one row sends, in its two round trips (jobd.store.jobstore).
FLOOR_SELECT = "START TRANSACTION; " + Queries.select_claimable.format(
    t="jobs", free="'default'", known="'default'", lock="FOR UPDATE SKIP LOCKED"
)
FLOOR_UPDATE = (
    "UPDATE jobs SET worker = 'bench-floor', time_claimed = %s, status = 'running',"
    " time_started = %s, attempts = attempts + 1 WHERE id = %s; COMMIT"
)
#: What a worker's claim of a row named by the poll sends, in one round trip.
FLOOR_NAMED = (
    Queries.claim_named.format(t="jobs", free="%s") + "; " + Queries.select_named.format(t="jobs")
)


@dataclasses.dataclass(frozen=True)
class LatencyPath:
    """One way of starting a job in the latency loop."""

    target: str  # of its jobs (each worker serves one target)
    via: str | None  # "worker": poll straight to it, "master": poke; None: no daemon (floor)
    named: bool  # the poll or poke names the job's id, as jobd's own client does


#: The ways a job is started in the latency loop, taken in turn; with --compare, the other
#: build's worker straight and through the master as well (naming the job when that build
#: takes ids).  "-t": by target only, as a client that knows no ids (the seed's) pokes.
LATENCY_PATHS = {
    "worker": LatencyPath("lat", "worker", True),
    "master": LatencyPath("lat", "master", True),
    "floor": LatencyPath("floor", None, True),
    "worker-t": LatencyPath("lat", "worker", False),
    "master-t": LatencyPath("lat", "master", False),
    "floor-t": LatencyPath("floor", None, False),
}
COMPARE_PATHS = {
    "worker-b": LatencyPath("latb", "worker", True),
    "master-b": LatencyPath("latb", "master", True),
}


async def floor_start(
    cur: pymysql.cursors.Cursor,
    spawn: Callable[[list[str]], Awaitable[bytes]],
    job_id: int,
    named: bool,
) -> bytes:
    """The floor: a worker's steps with no daemon in the way.  This process itself runs
    the statements of a worker's claim on the row it has just inserted (`named`: the one
    round trip of a claim by id; else the two of a claim by target), then /bin/date
    through jobd's launcher.  Returns what date printed."""
    now = int(time.time())
    if named:
        cur.execute(FLOOR_NAMED, ("bench-floor", now, now, job_id, "floor", now, "default", job_id))
        cur.nextset()
        if len(cur.fetchall()) != 1:
            raise RuntimeError(f"the floor's claim by id did not take job {job_id}")
    else:
        cur.execute(FLOOR_SELECT, ("floor", now, 8))
        cur.nextset()
        ((job_id, *_),) = cur.fetchall()
        cur.execute(FLOOR_UPDATE, (now, now, job_id))
        while cur.nextset():
            pass
    stdout = await spawn(["/bin/date", "+%s%N"])
    cur.execute("UPDATE jobs SET status = 'done', result = 'ok' WHERE id = %s", (job_id,))
    return stdout


#: Seconds after the poll's (or poke's) reply before the benchmark first reads the row: its
#: own queries would otherwise compete with the claim and the spawn they time (a job
#: starts a few milliseconds after its INSERT).
OBSERVE_AFTER = 0.01
#: The pause after each latency job, before the next one's INSERT.
IDLE_BETWEEN_JOBS = 0.01


def _python_steps() -> int:
    """A fixed piece of pure Python work of a few microseconds."""
    total = 0
    for i in range(200):
        total += i * i
    return total


def idle_slowdown(idle: float = IDLE_BETWEEN_JOBS, count: int = 300) -> dict[str, float]:
    """How much slower the same Python steps run right after `idle` seconds of sleep (as
    each latency job's steps do: every process on its path was idle between jobs) than
    back to back: p50 µs of each, and their ratio.  On virtual CPUs that wake slowly it is
    well above 1, which every step of a job's start pays."""

    def timed(pause: float) -> float:
        times = []
        for _ in range(count):
            if pause:
                time.sleep(pause)
            start = time.perf_counter_ns()
            _python_steps()
            times.append((time.perf_counter_ns() - start) / 1000)
        return statistics.median(times)

    busy, after_idle = timed(0.0), timed(idle)
    return {"idle_ms": idle * 1000, "busy_us": busy, "after_idle_us": after_idle,
            "ratio": after_idle / busy}  # fmt: skip


def idle_slowdown_text(slow: dict[str, float]) -> str:
    """One line for the figures of `idle_slowdown`, in the phase's output and the summary."""
    return (
        f"the same Python steps {slow['busy_us']:.1f} us back to back,"
        f" {slow['after_idle_us']:.1f} us after {slow['idle_ms']:g} ms idle (x{slow['ratio']:.1f})"
    )


async def wait_row_done(conn: pymysql.connections.Connection, job_id: int, what: str) -> bytes:
    """Poll the row until it is done (first after OBSERVE_AFTER, then every 2 ms, 10 s at
    most); returns its stdout."""
    await asyncio.sleep(OBSERVE_AFTER)
    deadline = time.monotonic() + 10
    while True:
        rows = query(conn, "SELECT status, result, stdout FROM jobs WHERE id = %s", (job_id,))
        status, result, stdout = rows[0]
        if status == "done":
            if result != "ok":
                raise RuntimeError(f"latency job {job_id} failed: {stdout!r}")
            return stdout
        if time.monotonic() > deadline:
            raise RuntimeError(f"latency job {job_id} ({what}) is still {status} after 10 s")
        await asyncio.sleep(0.002)


async def latency_loop(
    scratch: Scratch, workers: dict[str, str], master: str, count: int, compare_named: bool
) -> dict[str, dict[str, Any]]:
    """`workers`: the address of the worker of each target (lat, and latb with --compare);
    `compare_named`: the other build's worker takes ids."""
    conn = scratch.conn
    assert conn is not None
    paths = dict(LATENCY_PATHS)
    # With --compare, the two builds swap places every other round, so that each follows
    # the floor (and the other build) as often: the step before a job moves its start.
    rounds = [list(LATENCY_PATHS)]
    if "latb" in workers:
        paths |= {
            name: dataclasses.replace(path, named=path.named and compare_named)
            for name, path in COMPARE_PATHS.items()
        }
        ours, theirs = ["worker", "master"], list(COMPARE_PATHS)
        rest = [name for name in LATENCY_PATHS if name not in ours]
        rounds = [ours + rest + theirs, theirs + rest + ours]
    order = [name for n in range(count) for name in rounds[n % len(rounds)]]
    starts: dict[str, list[float]] = {name: [] for name in paths}
    trips = {name: [] for name, path in paths.items() if path.via}
    statements = {name: [] for name, path in paths.items() if path.via}
    spawn = jobd_spawner()
    # The floor's claims go over a connection like the worker's: multi-statements, READ
    # COMMITTED.
    floor_conn = connect(scratch.server, scratch.database, multi_statements=True)
    counted = user_counters(conn, scratch.user) if scratch.userstat else None
    async with contextlib.AsyncExitStack() as stack:
        direct = {
            target: await stack.enter_async_context(Client(address, timeout=10))
            for target, address in workers.items()
        }
        via = await stack.enter_async_context(Client(master, timeout=10))
        with floor_conn, floor_conn.cursor() as floor_cur:
            floor_cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            for name in order:
                path = paths[name]
                before = time.time_ns()
                with conn.cursor() as cur:
                    cur.execute(
                        "INSERT INTO jobs (target, time_created) VALUES (%s, UNIX_TIMESTAMP())",
                        (path.target,),
                    )
                    job_id = cur.lastrowid
                sent = time.perf_counter()
                data: dict[str, Any] = {"targets": [path.target]}
                if path.named:
                    data["ids"] = [job_id]
                if path.via is None:
                    stdout = await floor_start(floor_cur, spawn, job_id, path.named)
                else:
                    if path.via == "worker":
                        await direct[path.target].request("poll", data)
                    else:
                        reply = await via.request("poke", data)
                        if reply["workers"] != [f"bench-{path.target}"]:
                            raise RuntimeError(f"the master did not poll the worker: {reply}")
                    trips[name].append((time.perf_counter() - sent) * 1000)
                    how = "poll to the worker" if path.via == "worker" else "poke"
                    stdout = await wait_row_done(conn, job_id, how)
                starts[name].append((int(stdout) - before) / 1e6)
                if counted is not None:
                    # The worker's statements since the last job's: this job's, all of
                    # them written by now (its outcome's UPDATE made the row done).
                    now_counted = user_counters(conn, scratch.user)
                    assert now_counted is not None
                    if path.via:
                        statements[name].append(
                            sum(now_counted[k] - counted[k] for k in USER_COUNTERS)
                        )
                    counted = now_counted
                await asyncio.sleep(IDLE_BETWEEN_JOBS)  # the worker idles before the next job
    result: dict[str, dict[str, Any]] = {
        name: {"jobs": count, "named": path.named, "start_ms": percentiles(starts[name])}
        for name, path in paths.items()
    }
    for name, values in trips.items():
        result[name]["round_trip_ms"] = percentiles(values)
        if statements[name]:
            result[name]["worker_sql_per_job"] = statistics.mean(statements[name])
    return result


def latency(scratch: Scratch, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    master = master_daemon(workdir, "master-lat")
    with running([master]):
        command = "/bin/date +%s%N"
        # One worker a target, named after it: this build's, and the other's (--compare).
        builds = {"lat": None, **({"latb": Path(args.compare)} if args.compare else {})}
        workers = {
            target: worker_daemon(
                scratch,
                workdir,
                f"bench-{target}",
                command,
                {target: args.concurrency},
                master.address,
                code,
            )
            for target, code in builds.items()
        }
        with running(list(workers.values())):
            wait_registered(master, {w.name for w in workers.values()})
            addresses = {target: w.address for target, w in workers.items()}
            compare_named = "latb" in workers and version_at_least(
                call(workers["latb"].address, "ping", timeout=5)["version"], NAMED_IDS_SINCE
            )
            result: dict[str, Any] = asyncio.run(
                latency_loop(scratch, addresses, master.address, args.latency_jobs, compare_named)
            )

    def show(what: str, figures: dict[str, Any]) -> None:
        ms = figures["start_ms"]
        sql = figures.get("worker_sql_per_job")
        statements = "" if sql is None else f", {sql:.2f} SQL statements a job"
        print(f"    {what} -> start: p50 {ms['p50']:.2f} ms, p99 {ms['p99']:.2f} ms{statements}")

    show("insert + poll naming the job to the worker", result["worker"])
    show("insert + poke naming the job to the master", result["master"])
    show("the same steps with no daemon (claim by id)", result["floor"])
    show("insert + poll by target to the worker", result["worker-t"])
    show("insert + poke by target to the master", result["master-t"])
    show("the same steps with no daemon (claim by target)", result["floor-t"])
    result["idle_slowdown"] = idle_slowdown()
    print(f"    {idle_slowdown_text(result['idle_slowdown'])}")
    if args.compare:
        other = {path: result.pop(path) for path in COMPARE_PATHS}
        commit = commit_of(Path(args.compare))
        result["compare"] = {"code": str(args.compare), "commit": commit, **other}
        print(f"    the build of --compare ({commit or args.compare}), in turn with those:")
        how = "naming the job" if compare_named else "by target (it takes no ids)"
        show(f"  insert + poll {how} to its worker", other["worker-b"])
        show(f"  insert + poke {how} to the master", other["master-b"])
    return result


if __name__ == "__main__":
    sys.exit("bench_worker.py is a part of bench/bench.py now: run bench/bench.py"
             " (--only ceiling,worker,latency for this part alone)")  # fmt: skip
