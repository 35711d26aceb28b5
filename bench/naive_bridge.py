"""The bridge a user would write, as a bench peer (its own process): ``python -m bench.naive_bridge SPEC.json``.

An aiokafka consumer (auto-commit) reads `stt.audio`; each session gets the official ``cartesia`` SDK's
STT socket (its defaults, permessage-deflate included) and a task that sends each chunk as it comes,
then ``sleep(chunk)`` — pacing as most bridges do it; every STT event is published as it arrives
(a plain, non-transactional producer); on the server's close, the session's final transcript (the
``turn.end`` transcripts joined) goes to the transcripts topic. No replay, no exactly-once.

It measures what the worker measures, the same way: send time against the audio clock (drift), STT
event → record acked, close → final acked; and its memory.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cartesia import AsyncCartesia

from bench import peer
from bench.stats import exact
from pipeline.audio import bytes_per_sample

END = b""


class Bridge:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.client = AsyncCartesia(api_key=spec["api_key"], base_url=spec["base_url"])
        self.producer = AIOKafkaProducer(bootstrap_servers=spec["bootstrap"], acks="all", linger_ms=2)
        self.queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.drift_ms: list[float] = []
        self.event_to_ack_ms: list[float] = []
        self.close_to_final_ms: list[float] = []
        self.ended = 0

    def _acked(self, since: float) -> Any:
        def done(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                self.event_to_ack_ms.append((time.monotonic() - since) * 1000)

        return done

    async def session(self, key: bytes, queue: asyncio.Queue[bytes], encoding: str, rate: int) -> None:
        session_id = key.decode()
        finals: list[str] = []
        per_s = rate * bytes_per_sample(encoding)  # type: ignore[arg-type]
        async with self.client.stt.auto_finalize.websocket(encoding=encoding, model="ink-2", sample_rate=rate) as conn:

            async def read() -> None:
                async for event in conn:
                    received = time.monotonic()
                    if event.type == "turn.end":
                        finals.append(event.transcript)  # type: ignore[union-attr]
                    future = await self.producer.send(self.spec["turns_topic"], value=event.to_json().encode(), key=key)
                    future.add_done_callback(self._acked(received))

            reader = asyncio.create_task(read())
            loop = asyncio.get_running_loop()
            start: float | None = None
            sent_s = 0.0
            while (chunk := await queue.get()) != END:
                now = loop.time()
                start = now if start is None else start
                self.drift_ms.append((now - (start + sent_s)) * 1000)
                await conn.send_raw(chunk)
                sent_s += len(chunk) / per_s
                await asyncio.sleep(len(chunk) / per_s)  # pacing: sleep for the chunk's duration
            await conn.send({"type": "close"})
            closed = time.monotonic()
            await reader
        final = {"session_id": session_id, "kind": "session", "status": "complete", "transcript": "".join(finals)}
        await (await self.producer.send(self.spec["transcripts_topic"], value=orjson.dumps(final), key=key))
        self.close_to_final_ms.append((time.monotonic() - closed) * 1000)
        self.ended += 1

    def handle(self, key: bytes, headers: dict[str, bytes], value: bytes) -> None:
        kind = headers.get("type")
        queue = self.queues.get(key)
        if kind == b"audio":
            if queue is None:
                queue = self.queues[key] = asyncio.Queue()
                task = asyncio.create_task(
                    self.session(key, queue, headers["encoding"].decode(), int(headers["sample_rate"]))
                )
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            queue.put_nowait(value)
        elif kind == b"end" and queue is not None:
            queue.put_nowait(END)
            del self.queues[key]

    async def consume(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            self.spec["audio_topic"],
            bootstrap_servers=self.spec["bootstrap"],
            group_id=self.spec["group_id"],
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                if consumer.assignment():
                    ready.set()
                for records in batch.values():
                    for r in records:
                        if r.key is not None and r.value is not None:
                            self.handle(r.key, dict(r.headers), r.value)
        finally:
            await consumer.stop()


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    bridge = Bridge(spec)
    await bridge.producer.start()
    ready, stop, sampling = asyncio.Event(), asyncio.Event(), asyncio.Event()
    consumer = asyncio.create_task(bridge.consume(ready, stop))
    await ready.wait()
    peer.say("ready")
    memory = peer.Memory()
    sampler = asyncio.create_task(peer.sample_every(memory, lambda: (len(bridge.tasks), 0), sampling))
    await peer.wait_for_stop()
    sampling.set()
    stop.set()
    await sampler
    await consumer
    for task in list(bridge.tasks):
        task.cancel()
    await bridge.producer.stop()
    return {
        "drift_ms": exact(bridge.drift_ms),
        "drift_above_100ms": sum(d > 100 for d in bridge.drift_ms) / max(1, len(bridge.drift_ms)),
        "event_to_ack_ms": exact(bridge.event_to_ack_ms),
        "close_to_final_ms": exact(bridge.close_to_final_ms),
        "ended": bridge.ended,
        "memory": memory.__dict__,
    }


def main() -> None:
    peer.report(asyncio.run(run(json.loads(Path(sys.argv[1]).read_text()))))


if __name__ == "__main__":
    main()
