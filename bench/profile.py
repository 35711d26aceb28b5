"""Where a peer's CPU goes: py-spy's raw stacks (``--profile``) summed by component.

Only the frames the event loop runs count (those above its dispatch frame: ``Runner.run`` on uvloop,
``Handle._run`` on asyncio's loop); the peer's ``main`` below the loop carries every sample and decides
none. A sample is charged to the first of those frames, walking from the leaf towards the root, that
belongs to a component: the Kafka client, the STT WebSocket (the ``websockets`` library and the
worker's direct socket writes), the official STT SDK, the worker's own code, the peer's own code, the
metrics library.
Standard-library frames (asyncio streams and tasks, dataclasses, random, …) are charged to whoever
called them, so a socket write made by the Kafka client counts as Kafka client. A sample with no such
frame is the event loop itself (uvloop's native code, the selector, callbacks with no Python caller).

Multiplied by the peer's CPU per audio-second, the shares say what each component costs: the Kafka
client's share of the intake floor peer is the cost any bridge built on that client pays to consume.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

KAFKA = "Kafka client (aiokafka)"
WEBSOCKET = "STT WebSocket (websockets, socket writes)"
SDK = "STT SDK (cartesia)"
PIPELINE = "worker code (pipeline/)"
PEER = "peer code (bench/)"
METRICS = "metrics (prometheus_client)"
LOOP = "event loop and its I/O (no Python caller)"
COMPONENTS = (KAFKA, WEBSOCKET, SDK, PIPELINE, PEER, METRICS, LOOP)

# The event loop's dispatch frames: what the loop runs is above the last of them.
_DISPATCH = re.compile(
    r"^(Runner\.run \(asyncio/runners\.py"
    r"|BaseEventLoop\._run_once \(asyncio/base_events\.py"
    r"|Handle\._run \(asyncio/events\.py)"
)
_LOCATION = re.compile(r"\(([^()]*)\)\s*$")


def component(location: str) -> str | None:
    """The component a frame's ``path:line`` belongs to; None for the standard library."""
    if "aiokafka/" in location:
        return KAFKA
    if "websockets/" in location or location.startswith("pipeline/stt/client.py"):
        return WEBSOCKET
    if "cartesia/" in location:
        return SDK
    if "prometheus_client/" in location:
        return METRICS
    if location.startswith("pipeline/"):
        return PIPELINE
    if location.startswith("bench/"):
        return PEER
    return None


def charge(stack: str) -> str:
    """The component one folded stack (``frame;frame;…``, root first) is charged to."""
    frames = stack.split(";")
    dispatch = [i for i, frame in enumerate(frames) if _DISPATCH.match(frame)]
    for frame in reversed(frames[dispatch[-1] + 1 :] if dispatch else frames):
        match = _LOCATION.search(frame)
        found = component(match.group(1)) if match else None
        if found is not None:
            return found
    return LOOP


def shares(raw: str) -> dict[str, float]:
    """Each component's share of the samples in py-spy's ``-f raw`` output (``stack count`` lines)."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            counts[charge(stack)] += int(count)
    total = sum(counts.values())
    return {name: counts[name] / total for name in COMPONENTS if counts[name]} if total else {}


def read(path: Path) -> dict[str, float]:
    """:func:`shares` of a profile file; empty if py-spy wrote none (it failed, or the peer ended first)."""
    return shares(path.read_text()) if path.is_file() else {}
