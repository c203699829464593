"""Logging to stderr for both daemons (journald adds its own timestamps and unit name)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    )
    # No record field of the format needs the caller's file and line, the thread or the
    # process: skip collecting them (the logging HOWTO's "Optimization"); at info a worker
    # logs two lines per job.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiomysql logs every dropped connection with a traceback; we log our own line.
    logging.getLogger("aiomysql").setLevel(logging.CRITICAL)
