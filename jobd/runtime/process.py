"""What a daemon reports of its own process."""

from __future__ import annotations

import os


def rss_bytes() -> int:
    """This process's resident memory, for `status` replies."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
