"""Run an :class:`Emulator` on its own event loop in a background thread, for sync and async tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.emulator.engines.base import Engine
from pipeline.emulator.engines.tones import TonesEngine
from pipeline.emulator.server import Emulator, EmulatorConfig


class EmulatorThread:
    """An emulator serving on 127.0.0.1 from a daemon thread; ``call`` runs code on its loop."""

    def __init__(self, engine: Engine | None = None, **config: Any) -> None:
        self.emulator = Emulator(engine or TonesEngine(), EmulatorConfig(**config))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="stt-emulator")

    def start(self) -> EmulatorThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.emulator.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.emulator.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        return self.emulator.base_url

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://")

    def stats(self) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            return self.emulator.stats()

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)


@contextmanager
def running_emulator(engine: Engine | None = None, **config: Any) -> Iterator[EmulatorThread]:
    emu = EmulatorThread(engine, **config).start()
    try:
        yield emu
    finally:
        emu.stop()
