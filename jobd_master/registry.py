"""The master's knowledge of its workers: who is registered, over which connection,
serving which targets, and when each was last heard from.

Pure bookkeeping, no I/O: the master daemon decides when to add, refresh and drop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobd.wire.protocol import NAMED_IDS_SINCE, version_at_least

#: Longest wait for a worker's answer to a quick request (status, pause, signals, ...).
QUICK_TIMEOUT = 2.0
#: A ROUTER envelope: the routing id frames that lead back to one worker connection.
Envelope = tuple[bytes, ...]


@dataclass
class WorkerEntry:
    name: str
    envelope: Envelope
    targets: dict[str, dict[str, int]]
    version: str
    listen: str
    connected_since: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    #: Pings in a row that got no answer; the worker is dropped at MISSED_PINGS.
    missed_pings: int = 0
    #: {target: description} from the worker's config (`jobctl targets`).
    descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def connection(self) -> str:
        """The routing id as shown in logs and status."""
        return b"/".join(self.envelope).decode("utf-8", "replace")

    def serves(self, target: str) -> bool:
        return target in self.targets

    def takes_named_polls(self) -> bool:
        """Whether a poll may name rows (`ids`): older workers refuse the field."""
        return version_at_least(self.version, NAMED_IDS_SINCE)

    def seen(self) -> None:
        self.last_seen = time.time()
        self.missed_pings = 0

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.listen,
            "connection": self.connection,
            "version": self.version,
            "targets": self.targets,
            "connected_since": round(self.connected_since, 3),
            "last_seen": round(self.last_seen, 3),
            "missed_pings": self.missed_pings,
            "descriptions": self.descriptions,
        }


class Registry:
    def __init__(self) -> None:
        self._by_name: dict[str, WorkerEntry] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[WorkerEntry]:
        return iter(sorted(self._by_name.values(), key=lambda w: w.name))

    def get(self, name: str) -> WorkerEntry | None:
        return self._by_name.get(name)

    def by_envelope(self, envelope: Envelope) -> WorkerEntry | None:
        return next((w for w in self._by_name.values() if w.envelope == envelope), None)

    def add(self, entry: WorkerEntry) -> None:
        """Add a worker; the caller has checked that its name is free."""
        self._by_name[entry.name] = entry

    def update(
        self,
        entry: WorkerEntry,
        targets: Mapping[str, Mapping[str, int]],
        version: str,
        listen: str,
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        """A re-registration over the same connection: new targets, same connection."""
        entry.targets = {t: dict(slots) for t, slots in targets.items()}
        entry.descriptions = dict(descriptions or {})
        entry.version = version
        entry.listen = listen
        entry.seen()

    def drop(self, name: str) -> WorkerEntry | None:
        return self._by_name.pop(name, None)

    def serving(self, target: str) -> list[WorkerEntry]:
        return [w for w in self if w.serves(target)]

    def targets(self) -> dict[str, list[str]]:
        """Every served target with the names of its workers."""
        out: dict[str, list[str]] = {}
        for worker in self:
            for target in worker.targets:
                out.setdefault(target, []).append(worker.name)
        return dict(sorted(out.items()))

    def split(self, targets: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
        """Group targets by worker name; also return the targets that nobody serves."""
        by_worker: dict[str, list[str]] = {}
        unserved = []
        for target in targets:
            workers = self.serving(target)
            if not workers:
                unserved.append(target)
            for worker in workers:
                by_worker.setdefault(worker.name, []).append(target)
        return by_worker, unserved
