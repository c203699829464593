"""PollFlow on its own: the coalescing rule without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from jobd.wire.endpoint import NoAnswer
from jobd_master.polls import PollFlow


class FakeWorker:
    """Records each poll when it is sent (handed over) and answers when told to."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.replies: list[asyncio.Future[None]] = []
        self.failed: list[tuple[list[str], Exception]] = []
        self.refuse = False  # the socket cannot take a poll (no such peer)
        self.named: list[list[int]] = []  # the ids each poll sent named

    def request(self, targets: list[str], ids: Sequence[int]) -> asyncio.Future[None]:
        if self.refuse:
            raise NoAnswer("cannot send: no route")
        self.sent.append(targets)
        self.named.append(list(ids))
        reply = asyncio.get_running_loop().create_future()
        self.replies.append(reply)
        return reply

    def answer(self, exc: Exception | None = None) -> None:
        reply = self.replies[-1]
        reply.set_exception(exc) if exc else reply.set_result(None)


async def settled(condition, turns: int = 100) -> None:
    """Until `condition()` holds, giving the event loop up to `turns` turns (a reply's
    callbacks run in the turn after it is set)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("not settled")


async def test_first_poke_goes_at_once_and_the_rest_is_coalesced():
    worker = FakeWorker()
    flow = PollFlow("w", worker.request, lambda t, e: worker.failed.append((t, e)))
    first = flow.poll(["a"])
    assert first.done() and first.result() is True  # sent before poll() returned
    assert worker.sent == [["a"]]

    later = [flow.poll([t]) for t in ["b", "a", "c"] * 1000]
    # Each poke is decided as it comes (PollFlow has no timer): gathered for the next poll.
    assert flow.pending == {"a", "b", "c"} and worker.sent == [["a"]]
    # A fake's loop has no event to wait for while a poll is in flight: 10 ms of it, and
    # still one poll in flight at a time.
    await asyncio.sleep(0.01)
    assert worker.sent == [["a"]] and not later[0].done()

    worker.answer()
    assert all(await asyncio.gather(*later))
    assert worker.sent == [["a"], ["a", "b", "c"]]  # 3,000 pokes, one more poll
    assert flow.sent == 2 and flow.pending == set()

    worker.answer(NoAnswer("gone"))  # a failed poll is reported with its targets
    await settled(lambda: worker.failed)
    assert [t for t, _ in worker.failed] == [["a", "b", "c"]]
    assert await flow.poll(["d"]) is True and worker.sent[-1] == ["d"]
    await flow.close()


async def test_close_tells_waiting_pokes_their_poll_was_not_sent():
    worker = FakeWorker()
    flow = PollFlow("w", worker.request, lambda t, e: None)
    await flow.poll(["a"])
    waiting = flow.poll(["b"])
    await flow.close()
    assert await waiting is False


async def test_a_poll_the_socket_refuses_is_reported_and_the_next_poke_tries_again():
    worker = FakeWorker()
    flow = PollFlow("w", worker.request, lambda t, e: worker.failed.append((t, e)))
    worker.refuse = True
    refused = flow.poll(["a"])
    assert refused.done() and refused.result() is False
    assert [t for t, _ in worker.failed] == [["a"]]
    worker.refuse = False
    assert await flow.poll(["b"]) is True and worker.sent == [["b"]]
    await flow.close()


async def test_targets_poked_meanwhile_whose_poll_is_refused_are_reported():
    worker = FakeWorker()
    flow = PollFlow("w", worker.request, lambda t, e: worker.failed.append((t, e)))
    assert await flow.poll(["a"]) is True
    waiting = flow.poll(["b"])  # behind the poll in flight
    worker.refuse = True  # the worker went away meanwhile
    worker.answer()
    assert await waiting is False
    assert [t for t, _ in worker.failed] == [["b"]]
    await flow.close()
    assert await flow.poll(["c"]) is False  # a closed flow sends nothing
    assert worker.sent == [["a"]]


async def test_a_poll_sent_at_once_names_the_pokes_rows_and_a_gathered_one_none():
    worker = FakeWorker()
    flow = PollFlow("w", worker.request, lambda t, e: None)
    assert await flow.poll(["a"], [7]) is True
    gathered = [flow.poll(["a"], [8]), flow.poll(["b"], [9])]  # behind the poll in flight
    worker.answer()
    assert all(await asyncio.gather(*gathered))
    worker.answer()
    assert await flow.poll(["a"]) is True
    assert worker.sent == [["a"], ["a", "b"], ["a"]]
    assert worker.named == [[7], [], []]
    await flow.close()
