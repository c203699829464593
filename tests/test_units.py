"""Pure pieces on their own: protocol validation, output buffers, slot queues, URLs."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import signal
import threading

import pytest

from jobd.config import DatabaseURL, TargetConfig
from jobd.jobs import Job
from jobd.runtime.backoff import Backoff
from jobd.runtime.logs import Formatter, TurnHandler
from jobd.wire import protocol
from jobd.wire.protocol import RequestError
from jobd.worker.aftermath import retry_delay
from jobd.worker.launcher import OutputBuffer, signal_name
from jobd.worker.queues import SlotQueue, TargetQueue


def test_request_validation_cleans_data():
    poll = protocol.WORKER_REQUESTS["poll"]
    assert poll.validate(None) == {"targets": None, "ids": ()}
    assert poll.validate({"targets": ["a", "b", "a"]}) == {"targets": ["a", "b"], "ids": ()}
    named = {"targets": ["a"], "ids": [7, 3, 7]}
    assert poll.validate(named) == {"targets": ["a"], "ids": [7, 3]}
    assert protocol.MASTER_REQUESTS["poke"].validate(named) == {"targets": ["a"], "ids": [7, 3]}
    concurrency = protocol.WORKER_REQUESTS["set-target-concurrency"]
    assert concurrency.validate({"target": "t", "concurrency": 3}) == {
        "target": "t",
        "concurrency": 3,
        "slot": "default",
    }
    signals = protocol.WORKER_REQUESTS["send-signal"].validate({"jobs": {"5": "term", 6: 9}})
    assert signals == {"jobs": {5: signal.SIGTERM, 6: signal.SIGKILL}}


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("poll", {"targets": [None]}),
        ("poll", {"targets": ["ok"] * (protocol.MAX_IDS + 1)}),
        ("add-target", {"target": "t", "slots": {"s": True}}),
        ("add-target", {"target": "t", "slots": {}}),
        ("add-target", {"target": "t"}),
        ("send-signal", {"jobs": {"x": "TERM"}}),
        ("send-signal", {"jobs": {1: 99999}}),
        ("run-manual", {"ids": [protocol.MAX_JOB_ID + 1]}),
    ],
)
def test_request_validation_refuses(type_, data):
    with pytest.raises(RequestError) as err:
        protocol.WORKER_REQUESTS[type_].validate(data)
    assert err.value.code == "bad_request"


def test_master_table_validates_routed_jobs():
    run = protocol.MASTER_REQUESTS["run-manual"]
    assert run.validate({"jobs": [{"id": 1, "target": "t"}]}) == {
        "jobs": [{"id": 1, "target": "t"}]
    }
    with pytest.raises(RequestError):
        run.validate({"jobs": [{"id": 1}]})


def test_output_buffer_keeps_a_prefix_and_counts_the_rest():
    buffer = OutputBuffer(5)
    for chunk in (b"abc", b"defg", b"hi"):
        buffer.feed(chunk)
    assert buffer.text() == "abcde\n[jobd: output truncated, 4 more bytes dropped]\n"
    empty = OutputBuffer(0)
    empty.feed(b"xyz")
    assert empty.text().startswith("\n[jobd: output truncated, 3 more")


def test_signal_names_fit_the_sig_column():
    assert signal_name(9) == "SIGKILL"
    assert signal_name(50) == "SIG50"  # a real-time signal without a name of its own
    assert len(signal_name(50)) <= 10  # char(10)


def test_slot_queue_orders_and_limits():
    slot = SlotQueue(concurrency=2)
    for job in (Job(3, "t", "s"), Job(1, "t", "s"), Job(2, "t", "s", priority=5)):
        slot.push(job)
    assert slot.room() == 0
    started = [job.id for job in slot.pop_startable(paused=False)]
    assert started == [2, 1]  # priority first, then id; never more than the concurrency
    assert [job.id for job in slot.pop_startable(paused=False)] == []
    slot.running.discard(2)
    slot.push(Job(9, "t", "s", manual=True))
    assert [job.id for job in slot.pop_startable(paused=True)] == [9]  # manual runs even paused


def test_versions_that_take_named_polls():
    since = protocol.NAMED_IDS_SINCE
    assert protocol.version_at_least("0.2.0", since)
    assert protocol.version_at_least("0.10", since) and protocol.version_at_least("1.0.0", since)
    assert not protocol.version_at_least("0.1.9", since)
    assert not protocol.version_at_least("", since)
    assert not protocol.version_at_least("dev", since)


def test_slots_free_for_named_jobs():
    target = TargetQueue.from_config("t", TargetConfig(slots={"a": 2, "b": 1}))
    assert target.slots_free_for(1) == ["a", "b"]
    assert target.slots_free_for(2) == ["a"]  # two rows may both be of slot b
    target.slots["a"].running.add(1)
    target.slots["b"].push(Job(2, "t", "b"))  # queued: its place is taken
    assert target.slots_free_for(1) == ["a"]
    target.paused = True
    assert target.slots_free_for(1) == []


def test_target_queue_room():
    target = TargetQueue.from_config("t", TargetConfig(slots={"a": 2, "b": 1}))
    target.slots["a"].push(Job(1, "t", "a"))
    assert target.room() == {"a": 1, "b": 1}
    target.set_concurrency("c", 4)
    assert target.concurrency() == {"a": 2, "b": 1, "c": 4}


def test_database_url_hides_the_password():
    url = DatabaseURL.parse("mysql://jobd:s%40cret@db.example:3307/jobs")
    assert (url.user, url.password, url.host, url.port, url.database) == (
        "jobd",
        "s@cret",
        "db.example",
        3307,
        "jobs",
    )
    assert "s@cret" not in repr(url) and "s@cret" not in str(url)
    assert url.redacted() == "mysql://jobd:***@db.example:3307/jobs"


def test_retry_delay_is_capped_exponential_with_jitter():
    target = TargetConfig(slots={"default": 1}, retry_backoff=2, retry_backoff_max=10)
    assert [retry_delay(target, n, 0.0) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]
    assert retry_delay(target, 2, 0.999) == pytest.approx(2.002, abs=0.01)  # up to half off


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_success():
    backoff = Backoff(0.2, 1.0)
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.2
    assert [Backoff(0.2, 1.0).after(n) for n in (1, 2, 3, 4, 5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_target_queue_reconfigure_keeps_running_and_returns_queued_of_removed_slots():
    target = TargetQueue.from_config("t", TargetConfig(slots={"a": 1, "b": 1}))
    target.slots["b"].push(Job(5, "t", "b"))
    target.slots["a"].running.add(7)
    gone = target.reconfigure(TargetConfig(slots={"a": 3}, timeout=9))
    assert [job.id for job in gone] == [5]
    assert target.concurrency() == {"a": 3}
    assert target.slots["a"].running == {7}
    assert target.options.timeout == 9


def test_slots_claim_ahead_only_jobs_that_start_soon():
    slot = SlotQueue(concurrency=4)
    assert (slot.ahead(), slot.room()) == (0, 4)  # nothing known yet: no claiming ahead
    slot.record_duration(0.002)  # very short jobs: up to eight more rounds, claimed ahead
    assert (slot.ahead(), slot.room()) == (32, 36)
    slot.record_duration(0.2)  # the mean moves to 0.0416 s: what starts within 0.1 s
    assert slot.ahead() == int(4 * 0.1 / (0.8 * 0.002 + 0.2 * 0.2)) == 9
    for _ in range(30):
        slot.record_duration(2.0)  # long jobs: nothing ahead, no hoarding
    assert (slot.ahead(), slot.room(), slot.free()) == (0, 4, 4)


def test_claims_take_what_starts_within_moments_straight_to_running():
    slot = SlotQueue(concurrency=4)
    assert slot.starts_soon() == 4  # nothing known yet: the free places only
    slot.record_duration(0.001)  # 1 ms jobs: all 32 claimed ahead start within 30 ms
    assert (slot.ahead(), slot.starts_soon()) == (32, 36)
    for n in range(10):
        slot.push(Job(n, "t", "default"))
    # Ten queued start first: of the 32 ahead (all start within 30 ms), 22 more, and no
    # free place.
    assert (slot.free(), slot.room(), slot.starts_soon()) == (0, 26, 22)
    slot.drain()
    for _ in range(30):
        slot.record_duration(0.05)  # 50 ms jobs: 2 of the 8 ahead start within 30 ms
    assert (slot.ahead(), slot.starts_soon()) == (8, 6)
    for _ in range(30):
        slot.record_duration(0.2)  # 0.2 s jobs: none ahead starts that soon
    assert (slot.ahead(), slot.starts_soon()) == (2, 4)


async def test_log_lines_of_one_loop_turn_are_written_together_in_order():
    class Stream(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    stream = Stream()
    handler = TurnHandler(stream)
    handler.setFormatter(Formatter("%(asctime)s %(message)s"))
    log = logging.getLogger("test.turns")
    log.addHandler(handler)
    log.propagate = False
    try:
        for n in range(5):
            log.warning("line %d", n)
        assert stream.writes == 0  # not yet: at the end of this turn
        await asyncio.sleep(0)
        assert stream.writes == 1
        lines = stream.getvalue().splitlines()
        assert [line.split()[-1] for line in lines] == ["0", "1", "2", "3", "4"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} line 0", lines[0])
        thread = threading.Thread(target=log.warning, args=("from a thread",))
        thread.start()
        thread.join()
        assert stream.getvalue().endswith("from a thread\n")  # outside the loop: at once
    finally:
        log.removeHandler(handler)
