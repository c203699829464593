"""Result callbacks: POST a job's outcome as JSON to a URL, with retries.

Knows no database and no sockets of ours; the worker records the returned summary.
The HTTP request itself is the standard library's (urllib) in a thread, so a slow
receiver never blocks the event loop or delays other jobs.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.request
from typing import Any

from jobd import __version__
from jobd.config import CallbackConfig
from jobd.jobs import Job, Outcome
from jobd.runtime.backoff import Backoff

#: 4xx answers that are worth another try; any other 4xx means the receiver refuses.
_RETRYABLE_4XX = {408, 425, 429}


def callback_payload(job: Job, outcome: Outcome, limit: int) -> dict[str, Any]:
    def cut(text: str) -> str:
        data = text.encode()
        return text if len(data) <= limit else data[:limit].decode(errors="ignore")

    return {
        "id": job.id,
        "target": job.target,
        "slot": job.slot,
        "schedule": job.schedule_id,
        "result": outcome.result,
        "return_code": outcome.code,
        "signal": outcome.signal,
        "duration": round(outcome.duration or 0.0, 6),
        "attempts": job.attempts,
        "stdout": cut(outcome.stdout),
        "stderr": cut(outcome.stderr),
        "stdout_truncated": len(outcome.stdout.encode()) > limit,
        "stderr_truncated": len(outcome.stderr.encode()) > limit,
    }


def _post(url: str, body: bytes, timeout: float) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"jobd/{__version__}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def deliver(url: str, payload: dict[str, Any], config: CallbackConfig) -> str:
    """POST `payload`; returns a one-line summary of how the delivery went."""
    body = json.dumps(payload).encode()
    backoff = Backoff(config.backoff, math.inf)
    last = ""
    for attempt in range(1, config.max_attempts + 1):
        try:
            status = await asyncio.to_thread(_post, url, body, config.timeout)
        except (OSError, ValueError) as exc:  # URLError is an OSError
            last = str(getattr(exc, "reason", exc))
        else:
            if 200 <= status < 300:
                return f"delivered: HTTP {status}, attempt {attempt}"
            last = f"HTTP {status}"
            if 400 <= status < 500 and status not in _RETRYABLE_4XX:
                return f"refused: {last}, attempt {attempt}"
        if attempt < config.max_attempts:
            await asyncio.sleep(backoff.next())
    return f"failed after {config.max_attempts} attempts: {last}"
