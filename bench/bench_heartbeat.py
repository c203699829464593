"""What heartbeats and a rescuer cost the database server: statements per second.

    .venv/bin/python bench/bench_heartbeat.py --userstat            # 100 workers, 5 s, 60 s
    .venv/bin/python bench/bench_heartbeat.py --userstat --quick    # the same over 15 s

In a scratch database (harness.Scratch), this process runs --workers instances of
jobd's own heartbeat (jobd.worker.heartbeat.Heartbeat, each on a connection of its own,
as a worker's) every --interval seconds, and one rescuer (jobd.runtime.rescuer.Rescuer)
that looks for dead instances every --rescue-interval seconds, for --seconds.  The
statements are counted twice: the server's global counters (Com_select + Com_insert +
Com_update + ... , as bench_worker.py reads them) over an idle window of the same length
first, the baseline, and over the window with the heartbeats (starting half an
interval after their first round); and, with --userstat, the
statements of the scratch user alone (information_schema.USER_STATISTICS), which only
the heartbeats and the rescuer use.  Expected: workers / interval + 1 / rescue_interval.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from bench_worker import global_counters, user_counters
from harness import DEFAULT_SERVER, Scratch

from jobd.config import DatabaseURL, load_worker_config
from jobd.runtime.rescuer import Rescuer
from jobd.store.instances import InstanceStore, new_instance_id
from jobd.worker.heartbeat import Heartbeat


class NoFence:
    """The fence of a worker that never loses its database here."""

    def stop_claiming(self) -> None: ...

    def stop_jobs(self, reason: str, grace: float) -> None: ...

    def resume(self) -> None: ...

    async def renew(self, instance: str, reason: str) -> None: ...


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat_interval")
    parser.add_argument("--rescue-interval", type=float, default=5.0)
    parser.add_argument(
        "--seconds", type=float, default=None, help="whole intervals best; default 60, quick 15"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--userstat", action="store_true", help="count the user's statements")
    parser.add_argument("--server-url", default=DEFAULT_SERVER)
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 15.0 if args.quick else 60.0
    return args


def counted(scratch: Scratch) -> tuple[int, int | None]:
    total = sum(global_counters(scratch.admin).values())
    user = user_counters(scratch.admin, scratch.user) if scratch.userstat else None
    return total, None if user is None else sum(user.values())


async def heartbeats(scratch: Scratch, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    url = DatabaseURL.parse(scratch.worker_url)
    path = workdir / "w.yaml"
    path.write_text(yaml.safe_dump({
        "name": "hb", "database": scratch.worker_url, "launcher": {"command": "true"},
        "targets": {"t": 1}, "heartbeat_interval": args.interval,
        "lease": max(30.0, 3 * args.interval),
    }))  # fmt: skip
    config = load_worker_config(str(path))
    stores = [InstanceStore(url, "jobs", pool_size=1) for _ in range(args.workers)]
    beats: list[Heartbeat] = []
    for n, store in enumerate(stores):
        await store.connect()
        named = config.__class__(**{**vars(config), "name": f"hb{n}"})
        beat = Heartbeat(store, named, lambda: {"t": {"max_attempts": 1}}, NoFence(),
                         new_instance_id())  # fmt: skip
        await beat.register()
        beats.append(beat)
    rescue_store = InstanceStore(url, "jobs", pool_size=1)
    await rescue_store.connect()
    rescuer = Rescuer(rescue_store, "bench", lambda targets: None, args.rescue_interval)

    # The baseline: the same window, nothing of ours running.
    before = counted(scratch)
    await asyncio.sleep(args.seconds)
    baseline = counted(scratch)[0] - before[0]
    tasks = [asyncio.create_task(b.run()) for b in beats]
    tasks.append(asyncio.create_task(rescuer.run()))
    # Counted from just after the first round, over whole rounds: the window then holds
    # as many heartbeats as the interval says, not a first round more.
    await asyncio.sleep(min(args.interval, args.rescue_interval) / 2)
    idle = counted(scratch)
    start = time.monotonic()
    await asyncio.sleep(args.seconds)
    busy = counted(scratch)
    took = time.monotonic() - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for store in [*stores, rescue_store]:
        await store.close()
    result = {
        "workers": args.workers, "interval": args.interval,
        "rescue_interval": args.rescue_interval, "seconds": round(took, 1),
        "expected_per_s": round(args.workers / args.interval + 1 / args.rescue_interval, 2),
        "baseline_per_s": round(baseline / args.seconds, 2),
        "global_per_s": round((busy[0] - idle[0]) / took, 2),
        "sweeps": rescuer.sweeps,
    }  # fmt: skip
    if busy[1] is not None and idle[1] is not None:
        result["user_per_s"] = round((busy[1] - idle[1]) / took, 2)
    return result


def main() -> int:
    args = parse_args()
    scratch = Scratch(DatabaseURL.parse(args.server_url.rstrip("/") + "/mysql"), args.userstat)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            r = asyncio.run(heartbeats(scratch, args, Path(workdir)))
    finally:
        scratch.close()
    print(
        f"heartbeat cost: {r['workers']} instances every {r['interval']:g} s, one rescuer"
        f" every {r['rescue_interval']:g} s, over {r['seconds']:g} s"
    )
    print(f"  statements/s, the server idle (baseline):  {r['baseline_per_s']:8.2f}")
    print(f"  statements/s, with them (global counters): {r['global_per_s']:8.2f}")
    if "user_per_s" in r:
        print(f"  statements/s of their user alone:          {r['user_per_s']:8.2f}")
    print(f"  expected (workers / interval + 1 / rescue): {r['expected_per_s']:8.2f}")
    print(f"  rescuer sweeps: {r['sweeps']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
