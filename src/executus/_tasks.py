"""Starting executus's own tasks so that none runs inside the call that starts it.

asyncio's default tasks take their first step from the event loop, after the call that
made them has returned. A loop's task factory may instead start a task eagerly (Python
3.12's ``asyncio.eager_task_factory``): its first step then runs inside
``create_task``, before the caller has recorded the task, and a job that ends in that
step ends inside the lane's own bookkeeping (a queue of such jobs would start one
another recursively). ``spawn`` keeps the default order under any factory.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["spawn"]

T = TypeVar("T")


async def _from_the_loop(fn: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...]) -> T:
    # The coroutine is made only after the first yield: a task cancelled before that
    # leaves no coroutine that was never awaited.
    await asyncio.sleep(0)
    return await fn(*args)


def spawn(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[..., Coroutine[Any, Any, T]],
    /,
    *args: Any,
    name: str | None = None,
    context: contextvars.Context | None = None,
) -> asyncio.Task[T]:
    """``loop.create_task(fn(*args))``, whose first step runs from the loop.

    Under a task factory (which may start tasks eagerly), ``fn(*args)`` is called from
    the task's second step: at the earliest in the loop's next turn, where a default
    task takes its first step.
    """
    if loop.get_task_factory() is None:
        return loop.create_task(fn(*args), name=name, context=context)
    coro = _from_the_loop(fn, args)
    try:
        return loop.create_task(coro, name=name, context=context)
    except BaseException:
        coro.close()  # the factory raised: no coroutine is left never awaited
        raise
