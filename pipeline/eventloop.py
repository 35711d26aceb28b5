"""Running the worker's event loop: uvloop when the ``uvloop`` setting asks for it and it is installed.

uvloop is an optional dependency (the ``fast`` extra); without it, or with ``STT_UVLOOP=false``, the
standard asyncio loop runs. Behaviour is the same either way; only the cost per I/O event differs.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if asked for and installed, else None (the standard loop)."""
    if not use_uvloop or importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool) -> T:
    """``asyncio.run(main)``, on uvloop if ``use_uvloop`` and it is installed."""
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(main)
