"""The plain-text demo as a process (Ctrl-C, a reader that goes away, bad options) and
``executus.testing.ManualClock``."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executus.testing import ManualClock

ROOT = Path(__file__).resolve().parents[1]
# ``-S``: no site-packages, so ``python -m executus`` is the standard-library fallback.
PLAIN = [sys.executable, "-S", "-X", "dev", "-m", "executus"]
ENV = {"PYTHONPATH": str(ROOT / "src")}


def test_ctrl_c_mid_demo_exits_cleanly() -> None:
    """Ctrl-C during the plain demo ends it with one line and exit 1: no traceback, no
    leaked tasks, nothing from asyncio's debug mode."""
    proc = subprocess.Popen(
        [*PLAIN, "demo"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "plain-text demo" in proc.stderr.readline()  # it runs: now wait mid-run
        time.sleep(1.5)  # of about 5 s
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert err.strip() == "Aborted!", err
    assert out == ""


def test_reader_going_away_is_not_an_error() -> None:
    """`python -m executus demo | reader` whose reader exits before the output is written
    ends with exit 0 and nothing on stderr but the demo's note."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the demo writes anything
    try:
        result = subprocess.run(
            [*PLAIN, "demo", "--scale", "0.2"],
            cwd=ROOT,
            env=ENV,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        os.close(write)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Error" not in result.stderr


def test_infinite_scale_is_a_usage_error() -> None:
    """An infinite --scale is a usage error (exit 2) naming the value, not a traceback."""
    result = subprocess.run(
        [*PLAIN, "demo", "--scale", "inf"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "--scale must be finite, got inf" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("seconds", [math.nan, math.inf])
def test_advance_refuses_nan_and_infinity(seconds: float) -> None:
    """advance() refuses a NaN or infinite step and leaves time and timers as they were."""
    clock = ManualClock(start=10.0)
    fired: list[str] = []
    clock.call_later(1.0, lambda: fired.append("t"))
    with pytest.raises(ValueError, match=r"seconds must be a finite number >= 0, got (nan|inf)"):
        clock.advance(seconds)
    assert clock.monotonic() == 10.0
    assert fired == []
    clock.advance(1.0)
    assert fired == ["t"]
    assert clock.monotonic() == 11.0


def test_call_later_refuses_a_nan_delay() -> None:
    """call_later() with a NaN delay is a ValueError, not a timer that fires at once."""
    clock = ManualClock()
    with pytest.raises(ValueError, match="delay must be a number"):
        clock.call_later(math.nan, lambda: None)
    assert clock.pending_timers == 0


def test_time_never_goes_back_when_a_timer_advances_the_clock() -> None:
    """A timer callback that advances the clock past the outer step's end: the clock
    keeps the later reading (monotonic), and timers still fire in time order."""
    clock = ManualClock(start=0.0)
    seen: list[tuple[str, float]] = []

    def jump() -> None:
        seen.append(("jump", clock.monotonic()))
        clock.advance(10.0)

    clock.call_later(1.0, jump)
    clock.call_later(5.0, lambda: seen.append(("five", clock.monotonic())))
    clock.advance(2.0)
    assert seen == [("jump", 1.0), ("five", 5.0)]
    assert clock.monotonic() == 11.0
