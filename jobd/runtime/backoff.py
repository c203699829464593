"""Pauses that grow: how jobd retries what failed (a database away, a master that
refuses a registration) without hammering it and without giving up."""

from __future__ import annotations

#: The first pause and the longest, in seconds, for retries against the database.
FIRST, MOST = 0.2, 5.0


class Backoff:
    """Pauses that start at `first` seconds and double up to `most`; `reset` after a
    success starts them over."""

    def __init__(self, first: float = FIRST, most: float = MOST) -> None:
        self.first = first
        self.most = most
        self.delay = first

    def next(self) -> float:
        """The pause to take now; the one after it is twice as long (up to `most`)."""
        delay = self.delay
        self.delay = min(delay * 2, self.most)
        return delay

    def after(self, failures: int) -> float:
        """The pause after the `failures`-th failure in a row (1-based), without state:
        the `failures`-th value `next` gives."""
        return min(self.most, self.first * 2 ** (failures - 1))

    def reset(self) -> None:
        self.delay = self.first
