"""The master's part of the benchmark: one jobd-master with many workers.  Run it through
bench.py, which prints the table.

1. Fan-out and the master's footprint.  A jobd-master as in production (ping interval 5 s,
   log level info) and --fleet-workers fake workers (bench/fake_workers.py: DEALER sockets
   that register and answer `ping` and `poll` with jobd's own protocol code, many to a
   process, --fleet-processes processes), each serving --fleet-targets-per-worker targets
   drawn at random (fixed seed) from --fleet-targets targets, so that each target has
   several workers.  The master's RSS (VmRSS) is read once it answers `ping` (idle, no
   worker), when every fake worker is registered, and after the pokes.  Then --pokes
   pokes, one at a time, each for --targets-per-poke targets drawn at random: take the
   time (CLOCK_MONOTONIC, which every process of the host shares), send `poke` to the
   master over a jobd.client connection opened before the loop, and wait until every
   worker serving one of the targets has reported receiving its `poll` (each fake worker
   takes the time first thing in its poll handler).  The fan-out latency of a poke is the
   latest of those receipt times minus the time taken before the poke; 10 ms pass between
   two pokes, so a worker's previous poll has been answered before the next poke (the
   master sends a worker one poll at a time).  The poke's own round trip is reported too,
   and every receipt is checked: each serving worker polled once, for its served targets
   among the poked ones, and no other worker.  The floor of the RSS is a Python process
   that has only imported the master's entry module (`jobd_master.cli`).

2. Drain.  A jobd-master and --drain-workers real `jobd` workers registered with it, all
   serving the one target `drain` with --drain-concurrency each, with the launcher
   `/bin/sh -c 'echo {id} >> RECORD'`: each job appends its own id to one file opened with
   O_APPEND (one write of a few bytes, so lines never mix).  --drain-jobs rows are
   inserted, then one `poke` goes to the master, and the bench waits until no row of the
   target is left unfinished.  The rate is the jobs over the time from the poke to that.
   The launcher's record must hold every id of the rows exactly once, and every row must
   end done/ok after exactly one start; the table says so, or what went wrong.  The
   ceiling is the same launcher spawned by this process alone at the drain's total
   concurrency (bench_worker).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from harness import (
    ROOT,
    Daemon,
    Profiler,
    Scratch,
    free_port,
    master_daemon,
    percentiles,
    query,
    rss_mb,
    running,
    wait_drained,
    wait_registered,
    worker_daemon,
)

from jobd.client import Client, call

FAKE_WORKERS = Path(__file__).resolve().parent / "fake_workers.py"
#: Seconds between two pokes of the fan-out run.
POKE_GAP = 0.010
#: Longest wait for the polls of one poke.
POKE_TIMEOUT = 2.0


# --- fan-out --------------------------------------------------------------------


def assign_targets(args: argparse.Namespace) -> dict[str, list[str]]:
    rng = random.Random(6)
    targets = [f"t{n:03d}" for n in range(args.fleet_targets)]
    return {
        f"fake-{n:03d}": sorted(rng.sample(targets, args.fleet_targets_per_worker))
        for n in range(args.fleet_workers)
    }


async def start_fleet(
    master: Daemon, report: str, assignment: dict[str, list[str]], processes: int, workdir: Path
) -> list[asyncio.subprocess.Process]:
    """Start the fake-worker processes and wait until each says `ready`."""
    path = workdir / "assignment.json"
    path.write_text(json.dumps(assignment))
    names = list(assignment)
    fleet = []
    with open(workdir / "fake_workers.log", "ab") as log:
        for n in range(processes):
            chunk = names[n::processes]
            argv = [
                sys.executable, str(FAKE_WORKERS), "--master", master.address,
                "--report", report, "--assignment", str(path), *chunk,
            ]  # fmt: skip
            fleet.append(
                await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=ROOT
                )
            )
    for process in fleet:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"a fake-worker process did not start, see {log.name}")
    return fleet


async def stop_fleet(fleet: list[asyncio.subprocess.Process]) -> None:
    for process in fleet:
        if process.returncode is None:
            process.terminate()
    for process in fleet:
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


async def poke_loop(
    master: Daemon, pull: zmq.asyncio.Socket, assignment: dict[str, list[str]], args: Any
) -> dict[str, Any]:
    serving: dict[str, set[str]] = collections.defaultdict(set)
    for name, targets in assignment.items():
        for target in targets:
            serving[target].add(name)
    all_targets = sorted(serving)
    rng = random.Random(66)
    plain = zmq.Socket.shadow(pull.underlying)
    fanout: list[float] = []
    trips: list[float] = []
    polled: list[int] = []
    problems: list[str] = []
    async with Client(master.address, timeout=10) as client:
        for n in range(args.pokes):
            while True:  # receipts of an earlier poke that came too late are dropped
                try:
                    plain.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
            targets = rng.sample(all_targets, args.targets_per_poke)
            expected = set().union(*(serving[t] for t in targets))
            before = time.monotonic_ns()
            reply = await client.request("poke", {"targets": targets})
            trips.append((time.monotonic_ns() - before) / 1e6)
            if sorted(reply["workers"]) != sorted(expected) or reply["errors"]:
                problems.append(f"poke {n}: reply {reply} for {len(expected)} serving workers")
            got: dict[str, int] = {}
            deadline = time.monotonic() + POKE_TIMEOUT
            while len(got) < len(expected):
                try:
                    frame = await asyncio.wait_for(pull.recv(), deadline - time.monotonic())
                except TimeoutError:
                    missing = sorted(expected - set(got))
                    problems.append(f"poke {n}: no poll reached {', '.join(missing)}")
                    break
                name, when, polled_targets = msgpack.unpackb(frame)
                if when < before:
                    continue
                if name in got or name not in expected:
                    problems.append(f"poke {n}: unexpected poll of {name}")
                elif set(polled_targets) != set(assignment[name]).intersection(targets):
                    problems.append(f"poke {n}: {name} polled for {polled_targets}")
                got[name] = when
            if len(got) == len(expected):
                fanout.append((max(got.values()) - before) / 1e6)
            polled.append(len(expected))
            await asyncio.sleep(POKE_GAP)
    return {
        "pokes": args.pokes,
        "targets_per_poke": args.targets_per_poke,
        "workers_per_poke": {
            "mean": sum(polled) / len(polled),
            "min": min(polled),
            "max": max(polled),
        },
        "fanout_ms": percentiles(fanout),
        "poke_round_trip_ms": percentiles(trips),
        "problems": problems[:20],
        "problem_count": len(problems),
    }


async def fleet_run(master: Daemon, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    assignment = assign_targets(args)
    ctx = zmq.asyncio.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    report = f"tcp://127.0.0.1:{free_port()}"
    pull.bind(report)
    fleet: list[asyncio.subprocess.Process] = []
    try:
        fleet = await start_fleet(master, report, assignment, args.fleet_processes, workdir)
        async with Client(master.address, timeout=10) as client:
            deadline = time.monotonic() + 60
            while len((await client.request("status"))["workers"]) < len(assignment):
                if time.monotonic() > deadline:
                    raise RuntimeError("the fake workers are not all registered after 60 s")
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        rss_registered = rss_mb(master.pid)
        print(f"    {len(assignment)} fake workers registered, master RSS {rss_registered:.1f} MB")
        path = args.profile_dir / "profile-master.txt"
        profiler = Profiler(master.pid, path) if args.profile else None
        result = await poke_loop(master, pull, assignment, args)
        result["profile"] = profiler.stop() if profiler is not None else None
        async with Client(master.address, timeout=10) as client:
            status = await client.request("status")
        result["polls_sent"] = sum(w.get("polls_sent", 0) for w in status["workers"].values())
        result["registered"] = len(status["workers"])
        result["rss_registered_mb"] = rss_registered
        result["rss_after_pokes_mb"] = rss_mb(master.pid)
    finally:
        await stop_fleet(fleet)
        pull.close()
        ctx.term()
    result["workers"] = len(assignment)
    result["processes"] = args.fleet_processes
    result["targets"] = args.fleet_targets
    result["targets_per_worker"] = args.fleet_targets_per_worker
    return result


def fanout(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    master = master_daemon(workdir, "master-scale")
    with running([master]):
        time.sleep(1.0)
        rss_idle = rss_mb(master.pid)
        result = asyncio.run(fleet_run(master, workdir, args))
    result["rss_idle_mb"] = rss_idle
    ms = result["fanout_ms"]
    print(
        f"    poke -> every serving worker polled: p50 {ms['p50']:.2f} ms, p99 {ms['p99']:.2f} ms"
    )
    if result["problem_count"]:
        print(f"    {result['problem_count']} problems, first: {result['problems'][0]}")
    return result


# --- drain ----------------------------------------------------------------------


def drain_command(record: Path) -> str:
    """The drain's launcher: appends the job's id to `record` (O_APPEND)."""
    return f"/bin/sh -c {shlex.quote(f'echo {{id}} >> {shlex.quote(str(record))}')}"


def drain(scratch: Scratch, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    conn = scratch.conn
    assert conn is not None
    target = "drain"
    record = workdir / "drain-record.txt"
    record.write_text("")
    command = drain_command(record)
    master = master_daemon(workdir, "master-drain")
    with running([master]):
        workers = [
            worker_daemon(
                scratch,
                workdir,
                f"drain-{n}",
                command,
                {target: args.drain_concurrency},
                master.address,
            )
            for n in range(args.drain_workers)
        ]
        names = {w.name for w in workers}
        with running(workers):
            wait_registered(master, names)
            _, statements = scratch.insert(target, args.drain_jobs)
            print(f"    inserted {args.drain_jobs:,} jobs in {statements} statements")
            started = time.monotonic()
            reply = call(master.address, "poke", {"targets": [target]})
            if set(reply["workers"]) != names:
                raise RuntimeError(f"the poke did not reach every drain worker: {reply}")
            processes = [w.process for w in workers if w.process is not None]
            ended, _ = wait_drained(scratch, target, processes, max(300.0, args.drain_jobs / 20))
    elapsed = ended - started
    ids = {row[0] for row in query(conn, "SELECT id FROM jobs WHERE target = %s", (target,))}
    runs = collections.Counter(int(word) for word in record.read_text().split())
    twice = sorted(job_id for job_id, count in runs.items() if count > 1)
    missing = sorted(ids - runs.keys())
    strangers = sorted(runs.keys() - ids)
    bad = scratch.not_ok(target)
    per_worker = dict(
        query(
            conn,
            "SELECT worker, COUNT(*) FROM jobs WHERE target = %s GROUP BY worker ORDER BY worker",
            (target,),
        )
    )
    result = {
        "jobs": args.drain_jobs,
        "workers": args.drain_workers,
        "concurrency": args.drain_concurrency,
        "launcher": command,
        "seconds": elapsed,
        "jobs_per_s": args.drain_jobs / elapsed,
        "record_lines": sum(runs.values()),
        "ran_twice": len(twice),
        "never_ran": len(missing),
        "unknown_ids": len(strangers),
        "rows_not_ok": bad,
        "jobs_per_worker": per_worker,
    }
    result["verified"] = not (twice or missing or strangers or bad) and len(ids) == args.drain_jobs
    print(
        f"    {result['jobs_per_s']:,.0f} jobs/s ({elapsed:.2f} s); record: {len(runs):,} ids,"
        f" {len(twice)} twice, {len(missing)} never; per worker {sorted(per_worker.values())}"
    )
    if not result["verified"]:
        print(
            f"    DRAIN CHECK FAILED: {len(twice)} ids ran twice (first {twice[:5]}),"
            f" {len(missing)} never ran (first {missing[:5]}), {len(strangers)} unknown ids,"
            f" {bad} rows not done/ok after one start, {len(ids)} rows"
        )
    return result
