"""The jobd benchmark: every figure of the performance issue (#6) in one run, each next to
its goal and to the ceiling of the machine measured in the same run.

    .venv/bin/python bench/bench.py --userstat            # the full run (5 to 8 minutes)
    .venv/bin/python bench/bench.py --userstat --quick    # smaller counts (about 1.5 minutes)
    .venv/bin/python bench/bench.py --only latency --compare ../other   # two builds in turn

It needs a MariaDB account that may create databases and users (by default root with no
password at 127.0.0.1:3306, or JOBD_TEST_DATABASE_URL, or --server-url).  It creates a
scratch database with the tables of schema.sql and a user of its own for the workers, and
drops them at the end; every daemon is a real `python -m jobd` / `python -m jobd_master`
process on free local ports, stopped at the end of its phase.

The phases, in this order (--only picks some):

    ceiling  bench_worker.py: spawn ceiling, spawn latency floor, the drain launcher's ceiling
    worker   bench_worker.py: throughput, SQL statements per job, RSS idle and over the soak
    latency  bench_worker.py: insert + poll (straight to the worker) / poke (through the
             master) -> launcher start
    fanout   bench_scale.py: one master, 100 fake workers of 20 targets: poke -> every
             serving worker polled; the master's RSS
    drain    bench_scale.py: ten real workers share one target and drain 50,000 jobs; the
             launcher's record shows each job ran exactly once

The docstrings of those modules say exactly how each figure is measured.  Prints one table
(figure | this run | goal | ceiling) and writes it with every figure to
bench/results/latest.json (--output).  Exits 1 when a phase failed (the table then says
which figures are missing) or a check failed (a job run twice or never, a poke that did
not reach a worker).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_scale
import bench_worker
from harness import DEFAULT_SERVER, ROOT, Scratch, imports_rss_mb, loadavg, machine, settle

from jobd.config import DatabaseURL

PHASES = ("ceiling", "worker", "latency", "fanout", "drain")
#: Defaults of the full run and of --quick.
PRESETS: dict[str, dict[str, int]] = {
    "full": {
        "jobs": 20_000,
        "latency_jobs": 500,
        "soak_jobs": 100_000,
        "soak_every": 10_000,
        "pokes": 1000,
        "drain_jobs": 50_000,
        "drain_ceiling_jobs": 10_000,
    },
    "quick": {
        "jobs": 5000,
        "latency_jobs": 100,
        "soak_jobs": 15_000,
        "soak_every": 3000,
        "pokes": 200,
        "drain_jobs": 5000,
        "drain_ceiling_jobs": 2000,
    },
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smaller counts (see PRESETS); the goals stay")
    add("--only", help=f"comma-separated phases to run, of {', '.join(PHASES)}")
    add("--concurrency", type=int, default=8, help="slot concurrency of the worker (8)")
    add("--jobs", type=int, help="jobs of the throughput run (20,000)")
    add("--ceiling-jobs", type=int, help="spawns of the ceiling (default: --jobs)")
    add("--latency-jobs", type=int, help="one-at-a-time jobs of each latency path (500)")
    add("--soak-jobs", type=int, help="jobs of the worker in all, for its RSS (100,000)")
    add("--soak-every", type=int, help="jobs between two RSS samples (10,000)")
    add("--fleet-workers", type=int, default=100, help="fake workers of the fan-out (100)")
    add("--fleet-processes", type=int, default=4, help="processes holding them (4)")
    add("--fleet-targets-per-worker", type=int, default=20, help="targets of each (20)")
    add("--fleet-targets", type=int, default=200, help="distinct targets among them (200)")
    add("--pokes", type=int, help="pokes of the fan-out run (1,000)")
    add("--targets-per-poke", type=int, default=3, help="targets of each poke (3)")
    add("--drain-workers", type=int, default=10, help="real workers of the drain (10)")
    add("--drain-concurrency", type=int, default=4, help="concurrency of each of them (4)")
    add("--drain-jobs", type=int, help="jobs of the drain (50,000)")
    add("--drain-ceiling-jobs", type=int, help="spawns of the drain launcher's ceiling (10,000)")
    add(
        "--compare",
        metavar="DIR",
        help="a checkout of another commit: the latency phase runs its worker too, taken in"
        " turn with this one's (straight and through the same master), so that both builds"
        " meet the same machine; printed and saved, not in the table",
    )
    add("--server-url", default=DEFAULT_SERVER, help="mysql://user:pass@host:port/")
    add(
        "--userstat",
        action="store_true",
        help="switch the server's userstat on for the run to count the worker's own statements",
    )
    add(
        "--profile",
        action="store_true",
        help="py-spy the worker during the throughput run and the master during the pokes"
        " (raw stacks next to --output; slows both down: its figures are not comparable)",
    )
    add("--output", default=str(ROOT / "bench" / "results" / "latest.json"))
    add(
        "--render",
        metavar="JSON",
        help="measure nothing: print the table of a saved run again (and rewrite it there)",
    )
    args = parser.parse_args()
    args.profile_dir = Path(args.output).resolve().parent
    for key, value in PRESETS["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.ceiling_jobs = args.ceiling_jobs or args.jobs
    if args.compare is not None:
        args.compare = str(Path(args.compare).resolve())  # a string: saved with the options
        if not Path(args.compare, "jobd", "__init__.py").is_file():
            parser.error(f"--compare: no jobd checkout at {args.compare}")
    args.phases = PHASES if not args.only else tuple(args.only.split(","))
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"--only: unknown phases {', '.join(sorted(unknown))}")
    small = [
        name
        for name in ("jobs", "concurrency", "soak_every", "pokes", "drain_jobs", "drain_workers")
        if getattr(args, name) < 1
    ]
    if small or args.latency_jobs < 2 or args.pokes < 2:
        parser.error("counts must be at least 1 (--latency-jobs and --pokes at least 2)")
    if args.targets_per_poke > args.fleet_targets or (
        args.fleet_targets_per_worker > args.fleet_targets
    ):
        parser.error("--fleet-targets must be at least the targets of a worker and of a poke")
    return args


# --- the table --------------------------------------------------------------------


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def rows(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The table's rows: figure, this run, goal, ceiling (text), the value and whether the
    goal is met (None: no goal).  A phase that did not run gives no rows; one that failed
    gives its rows with `error` as the value."""
    out: list[dict[str, Any]] = []

    def row(
        figure: str,
        phase: str,
        value: Callable[[], float],
        shown: Callable[[float], str],
        goal: str,
        met: Callable[[float], bool] | None,
        ceiling: Callable[[], str] = lambda: "-",
    ) -> None:
        if phase not in args.phases:
            return
        entry: dict[str, Any] = {"figure": figure, "goal": goal, "value": None, "met": None}
        try:
            entry["value"] = value()
            entry["this_run"] = shown(entry["value"])
            entry["met"] = met(entry["value"]) if met is not None else None
        except (KeyError, TypeError):
            entry["this_run"] = "error" if phase in results.get("errors", {}) else "-"
        try:
            entry["ceiling"] = ceiling()
        except (KeyError, TypeError):
            entry["ceiling"] = "-"
        out.append(entry)

    r = results
    ceiling = r.get("ceiling", {})
    spawn = ceiling.get("spawn_latency_ms", {})
    worker = r.get("worker", {})
    # The ceilings of the throughput rows: taken right before and after that run (means).
    around = worker.get("throughput", {}).get("ceiling_around", {})
    lat = r.get("latency", {})
    fan = r.get("fanout", {})
    drain = r.get("drain", {})
    floors = r.get("floors", {})
    n, c, ln = args.jobs, args.concurrency, args.latency_jobs

    def floor(pct: str, path: str) -> str:
        """A latency row's floor: the same steps with no daemon, and the spawn alone."""
        parts = [f"{lat[path]['start_ms'][pct]:.2f} (no daemon)"]
        if spawn:
            parts.append(f"{spawn[pct]:.2f} (spawn)")
        return "; ".join(parts)

    row(
        f"throughput, {n:,} x /bin/true, one worker, concurrency {c} (jobs/s)",
        "worker",
        lambda: worker["throughput"]["jobs_per_s"],
        _num,
        ">= 1,000",
        lambda v: v >= 1000,
        lambda: f"{_num(around['jobs_per_s'])} (spawn ceiling)",
    )
    row(
        "throughput / spawn ceiling (the fastest spawn path)",
        "worker",
        lambda: worker["throughput"]["jobs_per_s"] / around["jobs_per_s"],
        lambda v: f"{v * 100:.1f} %",
        ">= 80 %",
        lambda v: v >= 0.8,
        lambda: "100 %",
    )
    row(
        "throughput / asyncio's spawn ceiling (the issue's yardstick)",
        "worker",
        lambda: worker["throughput"]["jobs_per_s"] / around["asyncio_jobs_per_s"],
        lambda v: f"{v * 100:.1f} %",
        ">= 80 %",
        lambda v: v >= 0.8,
        lambda: f"{_num(around['asyncio_jobs_per_s'])} spawns/s",
    )
    cpu = worker.get("throughput", {}).get("cpu_ms_per_job", {})
    spawn_cpu = worker.get("throughput", {}).get("ceiling_cpu_ms_per_spawn", {})

    def cpu_parts(parts: dict[str, float], names: tuple[str, ...]) -> str:
        return " + ".join(f"{parts[name]:.3f} {name}" for name in names if name in parts)

    row(
        "CPU per job of the throughput run (ms)",
        "worker",
        lambda: sum(cpu.values()),
        lambda v: f"{v:.3f} = {cpu_parts(cpu, ('worker', 'processes', 'database'))}",
        "-",
        None,
        lambda: (
            f"{sum(spawn_cpu.values()):.3f} = {cpu_parts(spawn_cpu, ('spawner', 'processes'))}"
            " (launcher alone)"
        ),
    )
    # Each latency figure twice: the poke (or poll) naming the job, as jobd's own client
    # sends it, and by target only, as a client that knows no ids does; each against the
    # floor of its own claim.
    latency_rows = (
        ("insert + poke via master -> launcher start", "master", "<= 3", 3.0, "<= 10", 10.0),
        ("insert + poll to the worker -> launcher start", "worker", "<= 2", 2.0, "-", None),
    )
    kinds = (("", "naming the job", "floor"), ("-t", "by target", "floor-t"))
    for suffix, how, floor_path in kinds:
        for what, path, *goals in latency_rows:
            for pct, goal, limit in (("p50", *goals[:2]), ("p99", *goals[2:])):
                row(
                    f"{what}, {how}, {pct} over {ln} (ms)",
                    "latency",
                    lambda pct=pct, path=path + suffix: lat[path]["start_ms"][pct],
                    lambda v: f"{v:.2f}",
                    goal,
                    (lambda v, limit=limit: v <= limit) if limit is not None else None,
                    lambda pct=pct, floor_path=floor_path: floor(pct, floor_path),
                )
    row(
        "worker RSS idle (MB)",
        "worker",
        lambda: worker["footprint"]["rss_idle_mb"],
        lambda v: f"{v:.1f}",
        "<= 40",
        lambda v: v <= 40,
        lambda: f"{floors['worker']:.1f} (imports alone)",
    )
    row(
        f"worker RSS after {args.soak_jobs:,} jobs (MB)",
        "worker",
        lambda: worker["footprint"]["rss_end_mb"],
        lambda v: f"{v:.1f}",
        "<= 45",
        lambda v: v <= 45,
    )
    row(
        f"worker RSS trend, 2nd half of {args.soak_jobs:,} jobs (MB per 10,000 jobs)",
        "worker",
        lambda: worker["footprint"]["trend_mb_per_10k"],
        lambda v: f"{v:+.2f}",
        "<= 0.1 (no upward trend)",
        lambda v: v <= 0.1,
    )
    row(
        f"master RSS with {args.fleet_workers} registered workers (MB)",
        "fanout",
        lambda: fan["rss_registered_mb"],
        lambda v: f"{v:.1f}",
        "<= 30",
        lambda v: v <= 30,
        lambda: f"{floors['master']:.1f} (imports alone)",
    )
    row(
        f"master RSS after the {args.pokes:,} pokes to them (MB)",
        "fanout",
        lambda: fan["rss_after_pokes_mb"],
        lambda v: f"{v:.1f}",
        "-",
        None,
        lambda: f"{floors['master']:.1f} (imports alone)",
    )
    for pct, goal, limit in (("p50", "-", None), ("p99", "<= 10", 10.0)):
        row(
            f"poke -> every serving worker polled, {args.fleet_workers} workers"
            f" x {args.fleet_targets_per_worker} targets, {pct} over {args.pokes:,} (ms)",
            "fanout",
            lambda pct=pct: fan["fanout_ms"][pct],
            lambda v: f"{v:.2f}",
            goal,
            (lambda v, limit=limit: v <= limit) if limit is not None else None,
        )
    row(
        f"drain, {args.drain_workers} workers x concurrency {args.drain_concurrency}, one target,"
        f" {args.drain_jobs:,} jobs (jobs/s)",
        "drain",
        lambda: drain["jobs_per_s"],
        _num,
        "-",
        None,
        lambda: f"{_num(ceiling['drain_launcher']['jobs_per_s'])} (its launcher alone)",
    )
    row(
        "drain: jobs run twice / never, by the launcher's record",
        "drain",
        lambda: drain["ran_twice"] + drain["never_ran"] + drain["unknown_ids"],
        lambda v: (
            f"{drain['ran_twice']} / {drain['never_ran']}"
            + ("" if drain["verified"] else " FAILED")
        ),
        "0 / 0",
        lambda v: bool(drain["verified"]),
    )
    sql = worker.get("sql", {})
    own = "worker_per_job" in sql
    row(
        f"SQL statements per job ({'worker' if own else 'global counters'}, claim included)",
        "worker",
        lambda: sql["worker_per_job"] if own else sql["global_per_job"],
        lambda v: f"{v:.2f}",
        "<= 3",
        lambda v: v <= 3,
    )
    for path, how in (("worker", "naming the job"), ("worker-t", "by target")):
        if "worker_sql_per_job" in lat.get(path, {}):
            row(
                f"SQL statements per job, one job at a time, poll {how} (worker)",
                "latency",
                lambda path=path: lat[path]["worker_sql_per_job"],
                lambda v: f"{v:.2f}",
                "-",
                None,
            )
    return out


def table(entries: list[dict[str, Any]]) -> str:
    lines = [("figure", "this run", "goal", "ceiling")]
    lines += [(e["figure"], e["this_run"], e["goal"], e["ceiling"]) for e in entries]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    text = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(text)


# --- the run ----------------------------------------------------------------------


def run_phase(name: str, results: dict[str, Any], action: Callable[[], Any]) -> None:
    """Run one phase; a failure is recorded (and printed) and the next phases still run."""
    load = loadavg()
    print(f"==> {name} (load average {load:.2f})", flush=True)
    results["loadavg_1m_at_start"][name] = load
    started = time.monotonic()
    try:
        results[name] = action()
    except Exception as exc:
        traceback.print_exc()
        results["errors"][name] = f"{type(exc).__name__}: {exc}"
        print(f"    {name} FAILED: {exc}", flush=True)
    results["phase_seconds"][name] = round(time.monotonic() - started, 1)


def render(path: Path) -> int:
    """The table of a saved run, from its figures (after a change to the table's rows)."""
    results = json.loads(path.read_text())
    saved = argparse.Namespace(**results["options"])
    results["rows"] = rows(results, saved)
    results["table"] = table(results["rows"])
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    return 0


def main() -> int:
    args = parse_args()
    if args.render:
        return render(Path(args.render))
    server = DatabaseURL.parse(args.server_url.rstrip("/") + "/mysql")
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "quick" if args.quick else "full",
        "options": {
            k: v for k, v in vars(args).items() if k not in ("server_url", "output", "profile_dir")
        },
        "loadavg_1m_at_start": {},
        "settled": {},
        "phase_seconds": {},
        "errors": {},
    }
    args.profile_dir.mkdir(parents=True, exist_ok=True)
    load_before = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="jobd-bench-"))
    drain_argv = shlex.split(bench_scale.drain_command(workdir / "ceiling-record.txt"))
    phases: dict[str, Callable[[Scratch], Any]] = {
        "ceiling": lambda _: bench_worker.measure_ceiling(
            args.ceiling_jobs,
            args.concurrency,
            drain_argv,
            args.drain_ceiling_jobs,
            args.drain_workers * args.drain_concurrency,
        ),
        "worker": lambda scratch: bench_worker.worker_run(scratch, workdir, args),
        "latency": lambda scratch: bench_worker.latency(scratch, workdir, args),
        "fanout": lambda _: bench_scale.fanout(workdir, args),
        "drain": lambda scratch: bench_scale.drain(scratch, workdir, args),
    }
    try:
        results["floors"] = {
            "worker": imports_rss_mb("jobd.worker.cli"),
            "master": imports_rss_mb("jobd_master.cli"),
        }
        if "ceiling" in args.phases:  # before the database exists: nothing else of ours runs
            run_phase("ceiling", results, lambda: phases["ceiling"](None))  # type: ignore[arg-type]
        scratch = Scratch(server, args.userstat)
        try:
            print(f"==> scratch database {scratch.database}")
            for name in args.phases:
                if name != "ceiling":
                    waited, history = settle(scratch)
                    results["settled"][name] = {"seconds": round(waited, 1), "history": history}
                    print(f"    (database settled in {waited:.1f} s, history list {history})")
                    run_phase(name, results, lambda name=name: phases[name](scratch))
            results["machine"] = machine(scratch)
        finally:
            scratch.close()
    finally:
        if results["errors"]:
            print(f"the logs of the daemons are kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    # Other work on the machine skews every figure: the 1-minute load before and after.
    results["loadavg_1m"] = [load_before, loadavg()]
    entries = rows(results, args)
    results["rows"] = entries
    results["table"] = table(entries)
    print()
    print(results["table"])
    print()
    footprint = results.get("worker", {}).get("footprint")
    if footprint:
        samples = ", ".join(
            f"{s['rss_mb']:.1f} ({s['jobs'] // 1000}k)" for s in footprint["samples"]
        )
        print(f"worker RSS (MB) by jobs done: {samples}")
    lat = results.get("latency")
    if lat:
        print(
            f"round trips, p50: poll to the worker {lat['worker']['round_trip_ms']['p50']:.2f} ms,"
            f" poke to the master {lat['master']['round_trip_ms']['p50']:.2f} ms (naming the"
            f" job); {lat['worker-t']['round_trip_ms']['p50']:.2f} and"
            f" {lat['master-t']['round_trip_ms']['p50']:.2f} ms by target"
        )
        slow = lat.get("idle_slowdown")
        if slow:
            print(
                f"idle slowdown: {bench_worker.idle_slowdown_text(slow)},"
                " as on each latency job's path"
            )
    fan = results.get("fanout")
    if fan:
        print(
            f"fan-out: {fan['workers_per_poke']['mean']:.1f} workers polled per poke on average;"
            f" poke round trip p50 {fan['poke_round_trip_ms']['p50']:.2f} ms; master RSS idle"
            f" {fan['rss_idle_mb']:.1f} MB, with {fan['registered']} workers"
            f" {fan['rss_registered_mb']:.1f} MB; {fan['problem_count']} problems"
        )
    profiles = (
        ("worker during the throughput run", results.get("worker", {}).get("throughput", {})),
        ("master during the pokes", fan or {}),
    )
    for what, phase in profiles:
        profile = phase.get("profile")
        if profile:
            print(f"profile of the {what} ({profile['samples']:,} samples, {profile['file']}):")
            for kind in ("self", "total"):
                top = ", ".join(f"{name} {pct}%" for name, pct in profile[kind][:8])
                print(f"    {kind}: {top}")
    if args.profile:
        print("profiled run: py-spy took CPU from the daemons, the figures are not comparable")
    m = results.get("machine")
    if m:
        print(
            f"machine: {m['nproc']} cores, {m['cpu']}, {m['memory_mb'] / 1024:.0f} GiB,"
            f" MariaDB {m['mariadb']}, Python {m['python']}, Linux {m['kernel']},"
            f" commit {m['commit']}{' + uncommitted changes' if m['uncommitted_changes'] else ''}"
        )
    print("load average (1 min) before and after: {:.2f}, {:.2f}".format(*results["loadavg_1m"]))
    for name, error in results["errors"].items():
        print(f"phase {name} FAILED: {error}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {output}")
    failed_checks = [
        e["figure"] for e in entries if e["figure"].startswith("drain: ") and not e["met"]
    ]
    if fan and fan["problem_count"]:
        failed_checks.append("fan-out receipts")
    return 1 if results["errors"] or failed_checks else 0


if __name__ == "__main__":
    sys.exit(main())
