"""Lane events: what observers see, and that observers cannot hurt the lane."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from executus import (
    EventKind,
    JobState,
    Lane,
    LaneBusy,
    LaneEvent,
    LoggingObserver,
    Preemption,
)
from executus._events import Emitter
from executus.testing import ManualClock
from tests.helpers import Gate, settle, value


class Log:
    def __init__(self) -> None:
        self.events: list[LaneEvent] = []

    def __call__(self, event: LaneEvent) -> None:
        self.events.append(event)

    def kinds(self, job_id: str | None = None) -> list[str]:
        return [e.kind.value for e in self.events if job_id is None or e.job_id == job_id]


async def test_job_lifecycle_events(clock: ManualClock) -> None:
    """A queued job reports submitted, started (with its wait) and finished (with run)."""
    lane = Lane("gpu", 1, clock=clock)
    log = Log()
    lane.add_observer(log)
    first, second = Gate(), Gate()
    await lane.submit(first, job_id="a", key="u1")
    await lane.submit(second, job_id="b", key="u2", priority=3)
    await settle()
    clock.advance(2)
    first.release()
    await settle()
    clock.advance(5)
    second.fail(ValueError("bad"))
    await settle()
    assert log.kinds("b") == ["submitted", "started", "finished"]
    submitted, started, finished = (e for e in log.events if e.job_id == "b")
    assert (submitted.state, submitted.position, submitted.key) == (JobState.QUEUED, 1, "u2")
    assert (started.wait, started.priority) == (pytest.approx(2.0), 3)
    assert finished.state is JobState.FAILED
    assert finished.run == pytest.approx(5.0)
    assert isinstance(finished.error, ValueError)
    assert log.events[0].time == pytest.approx(clock.time() - 7)


async def test_rejected_cancelled_resized_closed() -> None:
    """Refusals, cancels, resizes and closing are reported."""
    lane = Lane("gpu", 1)
    log = Log()
    lane.add_observer(log)
    await lane.submit(Gate())
    queued = await lane.submit(Gate(), job_id="q")
    with pytest.raises(LaneBusy):
        await lane.submit(value(1), max_wait=0)
    await queued.cancel()
    await lane.set_max_concurrent(3)
    await lane.aclose(drain=False)
    await settle()
    kinds = [e.kind for e in log.events]
    assert EventKind.REJECTED in kinds
    rejected = next(e for e in log.events if e.kind is EventKind.REJECTED)
    assert (rejected.position, rejected.job_id) == (2, None)
    assert log.kinds("q") == ["submitted", "cancelled"]
    resized = next(e for e in log.events if e.kind is EventKind.RESIZED)
    assert resized.max_concurrent == 3
    assert kinds.count(EventKind.CLOSED) == 1


async def test_preempted_and_requeued_events() -> None:
    """A requeued victim reports preempted (state QUEUED), then starts again."""
    lane = Lane("gpu", 1, preemption=Preemption(min_runtime=0, requeue=True))
    log = Log()
    lane.add_observer(log)
    victim = Gate()
    await lane.submit(victim, job_id="v", preemptible=True)
    await settle()
    urgent = Gate()
    await lane.submit(urgent, job_id="u", priority=5)
    await settle()
    urgent.release()
    await settle()
    victim.release()
    await settle()
    assert log.kinds("v") == ["submitted", "started", "preempted", "started", "finished"]
    preempted = next(e for e in log.events if e.kind is EventKind.PREEMPTED)
    assert preempted.state is JobState.QUEUED


async def test_every_job_ends_with_exactly_one_end_event() -> None:
    """Across outcomes, each job gets one of finished, cancelled or preempted."""
    lane = Lane("gpu", 2, preemption=Preemption(min_runtime=0))
    log = Log()
    lane.add_observer(log)
    gates = [Gate() for _ in range(30)]
    handles = [
        await lane.submit(g, preemptible=i % 3 == 0, priority=i % 4) for i, g in enumerate(gates)
    ]
    for i, (g, h) in enumerate(zip(gates, handles, strict=True)):
        await settle()
        if h.state is JobState.RUNNING and g.running:
            (g.fail(ValueError()) if i % 2 else g.release())
        elif h.state is JobState.QUEUED and i % 5 == 0:
            await h.cancel()
    await lane.aclose(drain=False)
    await settle()
    ends = Counter(
        e.job_id
        for e in log.events
        if e.kind in (EventKind.FINISHED, EventKind.CANCELLED, EventKind.PREEMPTED)
    )
    assert set(ends) == {h.id for h in handles}
    assert set(ends.values()) == {1}


async def test_a_raising_observer_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """An observer that raises does not break the lane; the error is logged."""
    lane = Lane("gpu", 1)

    def broken(event: LaneEvent) -> None:
        raise RuntimeError("observer bug")

    lane.add_observer(broken)
    with caplog.at_level(logging.ERROR, logger="executus.events"):
        assert await lane.run(value(5)) == 5
        await settle()
    assert "lane observer" in caplog.text
    assert "observer bug" in caplog.text


async def test_a_slow_async_observer_does_not_stall_the_lane() -> None:
    """An async observer that blocks does not delay starts; it catches up later."""
    lane = Lane("gpu", 1)
    gate = asyncio.Event()
    seen: list[str] = []

    async def slow(event: LaneEvent) -> None:
        await gate.wait()
        seen.append(event.kind.value)

    lane.add_observer(slow)
    results = [await lane.run(value(i)) for i in range(20)]
    assert results == list(range(20))
    assert seen == []
    gate.set()
    await settle(200)
    assert seen.count("finished") == 20
    lane.remove_observer(slow)
    await settle()


async def test_emitter_drops_oldest_past_its_buffer() -> None:
    """An async observer that falls too far behind loses its oldest events, counted."""
    emitter = Emitter(buffer=3)
    gate = asyncio.Event()
    got: list[int] = []

    async def slow(event: LaneEvent) -> None:
        await gate.wait()
        got.append(event.position or 0)

    emitter.add(slow)
    for i in range(10):
        emitter.emit(LaneEvent(EventKind.SUBMITTED, "x", 0.0, position=i))
        await asyncio.sleep(0)
    gate.set()
    await settle(50)
    assert emitter.dropped(slow) > 0
    assert got[-1] == 9
    assert len(got) + emitter.dropped(slow) == 10
    await emitter.aclose()


def test_observer_must_be_callable() -> None:
    """add_observer refuses a non-callable with a clear error."""
    with pytest.raises(TypeError, match=r"^observer must be callable with one LaneEvent, got 3$"):
        Lane("x").add_observer(3)  # type: ignore[arg-type]


async def test_logging_observer_fields(caplog: pytest.LogCaptureFixture) -> None:
    """LoggingObserver logs each event with lane, job id, key and outcome fields."""
    lane = Lane("gpu", 1)
    lane.add_observer(LoggingObserver())
    with caplog.at_level(logging.DEBUG, logger="executus.lane"):
        await lane.run(value(1), job_id="j", key="alice")
        await settle()
    records = [r for r in caplog.records if r.name == "executus.lane"]
    assert [r.__dict__["event"] for r in records] == ["submitted", "started", "finished"]
    last = records[-1]
    assert (last.__dict__["lane"], last.__dict__["job_id"], last.__dict__["key"]) == (
        "gpu", "j", "alice"
    )  # fmt: skip
    assert last.__dict__["state"] == "succeeded"
    assert last.getMessage().startswith("lane 'gpu': finished job 'j' key 'alice' succeeded")


async def test_lanes_are_quiet_without_observers(caplog: pytest.LogCaptureFixture) -> None:
    """A lane with no observer logs nothing."""
    with caplog.at_level(logging.DEBUG):
        await Lane("gpu", 1).run(value(1))
    assert not [r for r in caplog.records if r.name.startswith("executus")]


async def test_emitter_close_lets_an_async_observer_finish_its_event() -> None:
    """Closing the emitter waits for an async observer to finish the event it has taken
    off its buffer (it awaits inside the call), so the last events are not lost."""
    emitter = Emitter()
    got: list[int] = []

    async def writer(event: LaneEvent) -> None:
        for _ in range(3):  # a write that takes a few awaits
            await asyncio.sleep(0)
        got.append(event.position or 0)

    emitter.add(writer)
    for i in range(3):
        emitter.emit(LaneEvent(EventKind.SUBMITTED, "x", 0.0, position=i))
    await emitter.aclose()
    assert got == [0, 1, 2]


async def test_emitter_close_stops_a_hung_async_observer() -> None:
    """An async observer that never returns is cancelled once the close's time bound
    has passed: closing does not hang."""
    emitter = Emitter()
    cancelled = asyncio.Event()

    async def hung(event: LaneEvent) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    emitter.add(hung)
    emitter.emit(LaneEvent(EventKind.SUBMITTED, "x", 0.0))
    await emitter.aclose(bound=0.01)
    assert cancelled.is_set()
