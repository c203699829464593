"""Daemon replies as the job API hands them on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

#: Hosts of a bind address that mean "every interface": a client uses the master's host.
_WILDCARDS = ("*", "0.0.0.0", "::", "")


def targets_from_status(status: Mapping[str, Any], from_worker: bool) -> dict[str, Any]:
    """{target: {"description", "workers": {worker: {slot: concurrency}}}} from the reply
    to `status` of a worker (`from_worker`) or of the master."""
    out: dict[str, dict[str, Any]] = {}
    if from_worker:
        for target, t in status["targets"].items():
            slots = {slot: s["concurrency"] for slot, s in t["slots"].items()}
            workers = {status["name"]: slots}
            out[target] = {"description": t.get("description", ""), "workers": workers}
        return dict(sorted(out.items()))
    for name, worker in sorted(status["workers"].items()):
        descriptions = worker.get("descriptions") or {}
        for target, slots in worker["targets"].items():
            entry = out.setdefault(target, {"description": "", "workers": {}})
            entry["workers"][name] = slots
            # Workers may describe a target differently; the first one that does wins.
            entry["description"] = entry["description"] or descriptions.get(target, "")
    return dict(sorted(out.items()))


def reachable(address: str, master: str) -> str:
    """A bind address as a client can connect to it: tcp://*:7082 -> tcp://MASTER:7082."""
    parts = urlsplit(address)
    if parts.scheme != "tcp" or (parts.hostname or "") not in _WILDCARDS:
        return address
    host = urlsplit(master).hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{parts.port}"
