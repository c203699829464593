"""The public client of jobd, for scripts and services.

    from jobd.client import Jobd

    with Jobd("mysql://jobd:secret@127.0.0.1:3306/jobd") as jobd:
        job_id = jobd.submit("mail", data={"to": "ann@example.org"})
        print(jobd.wait(job_id, timeout=60))   # {"result": "ok", "code": 0, ...}

    from jobd.client import call
    call("tcp://127.0.0.1:7081", "poke", {"targets": ["mail"]})

Two layers, one import: the request client (`Client`, `call`; jobd.wire.client) and the
job API on the jobs table (`AsyncJobd`, `Jobd`; jobd.api).  The job API is imported on
first use, so a script that only sends requests never loads the database driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobd.wire.client import Client, call
from jobd.wire.curve import ClientCurve
from jobd.wire.endpoint import NoAnswer
from jobd.wire.protocol import RequestError

if TYPE_CHECKING:
    from jobd.api.instances import LeaseHeld
    from jobd.api.jobs import AsyncJobd
    from jobd.api.sync import Jobd
    from jobd.api.waiting import JobNotFound, WaitTimeout
    from jobd.jobs import Outcome
    from jobd.store.catalog import TargetStats

__all__ = [
    "AsyncJobd", "Client", "ClientCurve", "JobNotFound", "Jobd", "LeaseHeld", "NoAnswer", "Outcome",
    "RequestError", "TargetStats", "WaitTimeout", "call",
]  # fmt: skip

#: Names of the job API, and the module each comes from (imported on first use).
_JOB_API = {
    "AsyncJobd": "jobd.api.jobs",
    "Jobd": "jobd.api.sync",
    "JobNotFound": "jobd.api.waiting",
    "WaitTimeout": "jobd.api.waiting",
    "Outcome": "jobd.jobs",
    "TargetStats": "jobd.store.catalog",
    "LeaseHeld": "jobd.api.instances",
}


def __getattr__(name: str) -> Any:
    module = _JOB_API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
