"""What the peer processes share: the line protocol with :mod:`bench.compare`, memory sampling, and the
``main`` of the peers that run on the worker's settings (:func:`main_with_settings`).

A peer prints ``ready`` once it consumes its partitions, samples itself every second while it runs,
stops when its stdin says ``stop`` (or closes), then prints one JSON report.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import proc_rss_kib
from pipeline import eventloop
from pipeline.settings import Settings

SAMPLE_S = 1.0  # snapshots cost the peer CPU: sample sparingly


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def wait_for_stop() -> None:
    """Until ``stop`` (or EOF) arrives on stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line or line.strip() == b"stop":
            return


@dataclass
class Memory:
    """Peak RSS, and RSS and buffered audio at the moment the most sessions were open."""

    start_kib: int = 0
    peak_kib: int = 0
    peak_sessions: int = 0
    rss_at_peak_sessions_kib: int = 0
    buffered_at_peak_sessions_kib: int = 0

    def sample(self, open_sessions: int, buffered_bytes: int) -> None:
        rss = proc_rss_kib() or 0
        self.peak_kib = max(self.peak_kib, rss)
        if open_sessions >= self.peak_sessions:
            self.peak_sessions = open_sessions
            self.rss_at_peak_sessions_kib, self.buffered_at_peak_sessions_kib = rss, buffered_bytes // 1024


async def sample_every(memory: Memory, read: Callable[[], tuple[int, int]], stop: asyncio.Event) -> None:
    memory.start_kib = proc_rss_kib() or 0
    while not stop.is_set():
        memory.sample(*read())
        await asyncio.sleep(SAMPLE_S)


def report(figures: dict[str, Any]) -> None:
    say(json.dumps(figures))


def main_with_settings(run: Callable[[Settings], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """A peer process built on the worker's settings: read them from the spec file named on the command
    line (``{"settings": {field: value}}``), run ``run`` on the event loop they choose, report."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    settings = Settings.load(env={}).replace(**spec["settings"])
    report(eventloop.run(run(settings), use_uvloop=settings.uvloop))
