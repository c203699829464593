"""Human output: aligned tables and short summaries of each reply."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns separated by two spaces; numeric columns right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    if not cells:
        return ""
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [
        all(_is_number(r[i]) for r in cells) and any(r[i] != "-" for r in cells)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def _is_number(text: str) -> bool:
    return text.lstrip("-").isdigit() or text == "-"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def lines(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def key_values(pairs: Mapping[str, Any]) -> str:
    width = max(len(k) for k in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {_cell(v)}" for k, v in pairs.items())


def errors(errors: Mapping[Any, str], what: str = "ERROR FROM") -> str:
    return table([what, "ERROR"], sorted(errors.items(), key=lambda kv: str(kv[0])))


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def ago(timestamp: float) -> str:
    return f"{max(0.0, time.time() - timestamp):.1f} s ago"


def clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def slots(slot_map: Mapping[str, Any]) -> str:
    """{slot: concurrency} as `4` (one default slot) or `high=4,low=2`."""
    if list(slot_map) == ["default"]:
        return str(slot_map["default"])
    return ",".join(f"{s}={c}" for s, c in slot_map.items())


def targets(target_map: Mapping[str, Mapping[str, Any]]) -> str:
    return " ".join(f"{t}:{slots(s)}" for t, s in target_map.items()) or "-"


# --- replies ----------------------------------------------------------------------


def poke(reply: Mapping[str, Any]) -> str:
    rows = [(w, "poll sent") for w in reply["workers"]]
    rows += [(w, f"poll not sent: {e}") for w, e in reply["errors"].items()]
    remembered = reply["remembered"]
    note = (
        f"no live worker serves {', '.join(remembered)}: remembered for the first that registers"
        if remembered
        else ""
    )
    return lines(table(["WORKER", "RESULT"], rows), note) or "no live worker to poll"


def targets_done(verb: str) -> Any:
    """pause/continue/poll of a worker: {"targets": [...]}."""

    def render(reply: Mapping[str, Any]) -> str:
        return f"{verb}: {', '.join(reply['targets']) or 'no targets'}"

    return render


def fan_out(verb: str) -> Any:
    """pause/continue through the master: {"workers": {name: {"targets"}}, "errors", "unserved"}."""

    def render(reply: Mapping[str, Any]) -> str:
        rows = [(w, verb, ", ".join(r.get("targets", []))) for w, r in reply["workers"].items()]
        rows += [(w, "error", e) for w, e in reply["errors"].items()]
        unserved = reply.get("unserved") or []
        note = f"no live worker serves: {', '.join(unserved)}" if unserved else ""
        return lines(table(["WORKER", "RESULT", "TARGETS"], rows), note) or "no live worker"

    return render


def worker_status(reply: Mapping[str, Any]) -> str:
    head = key_values({
        "worker": reply["name"],
        "version": reply["version"],
        "pid": reply.get("pid"),
        "uptime": duration(reply["uptime"]),
        "rss": mib(reply["rss"]),
        "running jobs": " ".join(map(str, reply.get("running", []))) or "none",
        "pending writes": reply.get("pending_writes", 0),
        "jobs claimed": claimed(reply.get("claimed")),
    })  # fmt: skip
    return lines(head, worker_targets(reply))


def claimed(counts: Mapping[str, int] | None) -> str:
    """The worker's jobs claimed so far, by target and by id (a poke that named them)."""
    if counts is None:
        return "-"  # a worker older than jobd 0.2
    return f"{counts['by_target']} by target, {counts['named']} named by a poke"


def worker_targets(reply: Mapping[str, Any]) -> str:
    rows = [
        (name, slot, t["paused"], s["concurrency"], s["queued"], s["running"])
        for name, t in reply["targets"].items()
        for slot, s in t["slots"].items()
    ]
    header = ["TARGET", "SLOT", "PAUSED", "CONCURRENCY", "QUEUED", "RUNNING"]
    return table(header, rows) or "no targets"


def master_status(reply: Mapping[str, Any]) -> str:
    head = key_values({
        "master": reply["listen"],
        "version": reply["version"],
        "pid": reply.get("pid"),
        "uptime": duration(reply["uptime"]),
        "rss": mib(reply["rss"]),
        "ping interval": f"{reply['ping_interval']:g} s",
        "workers": len(reply["workers"]),
        "remembered pokes": ", ".join(reply.get("remembered", [])) or "none",
        "job events": (reply.get("events") or {}).get("address") or "off",
        "schedules": reply.get("schedules") or "off (no database)",
    })  # fmt: skip
    return lines(head, workers(reply))


def workers(reply: Mapping[str, Any]) -> str:
    polled = any("status" in w or "error" in w for w in reply["workers"].values())
    header = ["NAME", "ADDRESS", "TARGETS", "VERSION", "LAST SEEN", "CONNECTED SINCE"]
    if polled:
        header += ["RUNNING", "QUEUED", "STATUS"]
    rows = []
    for name, w in reply["workers"].items():
        row = [name, w["address"], targets(w["targets"]), w["version"], ago(w["last_seen"]),
               clock(w["connected_since"])]  # fmt: skip
        if polled:
            status = w.get("status")
            if status:
                counts = [s for t in status["targets"].values() for s in t["slots"].values()]
                row += [sum(s["running"] for s in counts), sum(s["queued"] for s in counts), "ok"]
            else:
                row += ["-", "-", w.get("error", "-")]
        rows.append(row)
    return table(header, rows) or "no workers registered"


def target_changed(reply: Mapping[str, Any]) -> str:
    return f"target {reply['target']}: slots {slots(reply['slots'])}"


def target_removed(reply: Mapping[str, Any]) -> str:
    return (
        f"removed target {reply['target']}: {reply['released']} queued jobs released,"
        f" {reply['running']} running jobs finishing"
    )


def manual(reply: Mapping[str, Any]) -> str:
    jobs = reply["jobs"]
    has_worker = any("worker" in r for r in jobs.values())
    header = ["ID", "RESULT", "CODE", "SIGNAL", "DURATION"] + (["WORKER"] if has_worker else [])
    rows = []
    outputs = []
    for job_id, r in sorted(jobs.items()):
        row = [job_id, r["result"], r["code"], r["signal"], f"{r.get('duration', 0):.3f} s"]
        rows.append(row + ([r.get("worker")] if has_worker else []))
        for stream in ("stdout", "stderr"):
            if r.get(stream):
                text = r[stream].rstrip("\n").replace("\n", "\n    ")
                outputs.append(f"job {job_id} {stream}:\n    {text}")
    return lines(table(header, rows), "\n".join(outputs), errors(reply["errors"], "ID"))


def signals(reply: Mapping[str, Any]) -> str:
    rows = []
    for job_id, r in sorted(reply["jobs"].items()):
        if isinstance(r, Mapping):  # through the master: {signal, worker}
            rows.append((job_id, r["signal"], r["worker"]))
        else:  # a worker: the signal's name
            rows.append((job_id, r, "-"))
    return lines(table(["ID", "SIGNAL", "WORKER"], rows), errors(reply["errors"], "ID"))


def ping(reply: Mapping[str, Any]) -> str:
    return f"{reply.get('name', '?')} {reply.get('version', '')} answers".strip()
