"""Tests for executus.deliver: the Deliverer protocol and its stock implementations."""

from __future__ import annotations

import asyncio
import io

import pytest

from executus.deliver import (
    CallbackDeliverer,
    Deliverer,
    Delivery,
    Discard,
    Recorder,
    Stdout,
)


def test_stock_deliverers_satisfy_the_protocol() -> None:
    """Every stock deliverer is a runtime-checkable Deliverer."""
    for d in (Discard(), Stdout(), CallbackDeliverer(print), Recorder()):
        assert isinstance(d, Deliverer)
    assert not isinstance(object(), Deliverer)


async def test_discard_accepts_and_drops() -> None:
    """Discard.deliver accepts any message and keeps nothing."""
    d = Discard()
    await d.deliver("t", "m")
    assert not hasattr(d, "__dict__")
    assert repr(d) == "Discard()"


async def test_stdout_writes_target_colon_message_lines() -> None:
    """Stdout writes one 'target: message' line per delivery to its stream."""
    buf = io.StringIO()
    out = Stdout(buf)
    await out.deliver("user-42", "queued (#3, ~30s)")
    await out.deliver("chan", "done")
    assert buf.getvalue() == "user-42: queued (#3, ~30s)\nchan: done\n"


async def test_stdout_defaults_to_current_sys_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """Stdout() without a stream writes to sys.stdout as it is at delivery time."""
    await Stdout().deliver("a", "hello")
    assert capsys.readouterr().out == "a: hello\n"
    assert repr(Stdout()) == "Stdout(sys.stdout)"


async def test_callback_deliverer_calls_sync_function() -> None:
    """A plain function gets (target, message)."""
    got: list[tuple[str, str]] = []
    d = CallbackDeliverer(lambda t, m: got.append((t, m)))
    await d.deliver("t", "m")
    assert got == [("t", "m")]


async def test_callback_deliverer_awaits_async_function() -> None:
    """A coroutine function is awaited, so its effect is done when deliver returns."""
    got: list[str] = []

    async def send(target: str, message: str) -> None:
        await asyncio.sleep(0)
        got.append(f"{target}/{message}")

    await CallbackDeliverer(send).deliver("t", "m")
    assert got == ["t/m"]


async def test_callback_deliverer_propagates_errors() -> None:
    """An exception from the callback reaches the caller of deliver."""

    def boom(target: str, message: str) -> None:
        raise RuntimeError("chat API down")

    with pytest.raises(RuntimeError) as info:
        await CallbackDeliverer(boom).deliver("t", "m")
    assert str(info.value) == "chat API down"


def test_callback_deliverer_rejects_non_callable() -> None:
    """A non-callable is refused at construction, naming its type."""
    with pytest.raises(TypeError) as info:
        CallbackDeliverer(3)  # type: ignore[arg-type]
    assert str(info.value) == "fn must be callable, got int"


async def test_recorder_records_and_filters() -> None:
    """Recorder keeps deliveries in order and filters them by target."""
    rec = Recorder()
    await rec.deliver("a", "1")
    await rec.deliver("b", "2")
    await rec.deliver("a", "3")
    assert rec.deliveries == [Delivery("a", "1"), Delivery("b", "2"), Delivery("a", "3")]
    assert rec.messages() == ["1", "2", "3"]
    assert rec.messages("a") == ["1", "3"]
    assert rec.targets() == ["a", "b"]
    assert rec.last() == Delivery("a", "3")
    assert rec.last("b") == Delivery("b", "2")
    assert rec.last("zzz") is None
    assert len(rec) == 3
    assert list(rec) == rec.deliveries
    assert repr(rec) == "<Recorder 3 deliveries>"
    rec.clear()
    assert len(rec) == 0
    assert rec.last() is None


async def test_recorder_wait_for_wakes_on_delivery() -> None:
    """wait_for returns once enough deliveries arrived from another task."""
    rec = Recorder()

    async def producer() -> None:
        for i in range(3):
            await asyncio.sleep(0)
            await rec.deliver("t", str(i))

    task = asyncio.create_task(producer())
    got = await rec.wait_for(3, timeout=5)
    await task
    assert [d.message for d in got] == ["0", "1", "2"]


async def test_recorder_wait_for_times_out() -> None:
    """wait_for raises TimeoutError when too few deliveries arrive in time."""
    rec = Recorder()
    await rec.deliver("t", "only one")
    with pytest.raises(TimeoutError):
        await rec.wait_for(2, timeout=0.01)
