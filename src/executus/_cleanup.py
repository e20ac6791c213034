"""Cancellation-safe waits for cleanup paths (shared by ``fanout`` and progress).

A caller that is cancelled must still see its cleanup through: the tasks and jobs it
started have to end before it raises, or they outlive it. Both helpers keep waiting when
cancelled again, passing the cancel on instead of cutting the wait short.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Set
from typing import Any

from ._job import JobHandle

__all__ = ["end_job", "wait_ended"]


async def wait_ended(pending: Set[asyncio.Future[Any]]) -> bool:
    """Wait until every future in ``pending`` is done, even if cancelled meanwhile.

    A cancel of the waiting task is passed on to those still running. Returns True when
    such a cancel arrived (the caller raises ``CancelledError`` once its own cleanup is
    done).
    """
    cancelled = False
    left = set(pending)
    while left:
        try:
            _, left = await asyncio.wait(left)
        except asyncio.CancelledError:
            cancelled = True
            for fut in left:
                fut.cancel()
    return cancelled


async def end_job(handle: JobHandle[Any], logger: logging.Logger, whose: str) -> bool:
    """Cancel a lane job and wait until it has ended, even if cancelled again meanwhile.

    A repeated cancel of the caller (cleaning up) is passed on to the job rather than
    cutting the wait short. If the lane fails to cancel the job (its backend is
    unreachable: ``LaneUnavailable``), that is logged on ``logger`` and the job is left to
    end by itself. Returns whether the job has ended.
    """
    while True:
        try:
            await handle.cancel()  # False at once when the job has already ended
        except asyncio.CancelledError:
            continue
        except Exception:
            logger.warning(
                "could not cancel job %r of %s (it is left to end by itself)",
                handle.id,
                whose,
                exc_info=True,
            )
        return handle.done()
