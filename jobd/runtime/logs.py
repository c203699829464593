"""Logging to stderr for both daemons (journald adds its own timestamps and unit name)."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import TextIO


class Formatter(logging.Formatter):
    """The standard formatter, with the date and time of a second formatted once: a busy
    worker logs thousands of lines a second (two per job at info)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
        return self.default_msec_format % (self._stamp, record.msecs)


class TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines logged in one turn of the event loop
    together, at the end of that turn: one write (a system call) instead of one a line.
    A line logged outside a running event loop is written at once."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self._loop
        if loop is not None and self._loop_thread == threading.get_ident() and loop.is_running():
            return loop
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._loop_thread = threading.get_ident()
        return self._loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        loop = self._running_loop()
        if loop is None:
            self.flush()
        elif len(self._lines) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            if self._lines:
                text = "".join(self._lines)
                self._lines.clear()
                self.stream.write(text)
            self.stream.flush()
        except Exception:
            self._lines.clear()
        finally:
            self.release()


def setup_logging(level: str, name: str) -> None:
    handler = TurnHandler(sys.stderr)
    handler.setFormatter(Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"))
    # No record field of the format needs the caller's file and line, the thread or the
    # process: skip collecting them (the logging HOWTO's "Optimization").
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiomysql logs every dropped connection with a traceback; we log our own line.
    logging.getLogger("aiomysql").setLevel(logging.CRITICAL)
