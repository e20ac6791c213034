"""Shared fixtures."""

from __future__ import annotations

import pytest

from executus.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    return ManualClock()
