"""The worker's event loop choice (pipeline.eventloop): uvloop when asked for and installed."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from pipeline.eventloop import loop_factory, run


async def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_standard_loop_when_uvloop_is_not_asked_for() -> None:
    assert loop_factory(False) is None
    assert run(loop_name(), use_uvloop=False).startswith("asyncio")


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop (the `fast` extra) not installed")
def test_uvloop_when_asked_for_and_installed() -> None:
    assert run(loop_name(), use_uvloop=True).startswith("uvloop")
