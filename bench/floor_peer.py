"""The Kafka intake floor, as a bench peer (its own process): ``python -m bench.floor_peer SPEC.json``.

It does the one thing every bridge must do and nothing else: consume `stt.audio` with the worker's own
consumer (:func:`pipeline.kafka.clients.worker_consumer`: same group settings, ``read_committed``, same
fetch settings) through plain ``getmany``, and drop the audio. No STT socket, no pacing, no outputs
except one empty ``kind=session`` record per session at its `end` (so the bench sees the session
finish; its transcript is empty, so "finals exact" reads 0 by design).

Its CPU per audio-second is what consuming the input alone costs in this process model (Python,
aiokafka, one event loop): a floor under the worker's and the naive bridge's figures. The bench prints
it below each level as a share of the naive bridge.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench import peer
from pipeline.kafka.clients import kafka_options, worker_consumer
from pipeline.settings import Settings


async def run(settings: Settings) -> dict[str, Any]:
    consumer = worker_consumer(settings)
    producer = AIOKafkaProducer(**kafka_options(settings, "floor"), linger_ms=2)
    consumer.subscribe([settings.audio_topic])
    await producer.start()
    await consumer.start()
    open_sessions: set[bytes] = set()
    counts = {"records": 0, "bytes": 0, "ended": 0}
    stop, sampling = asyncio.Event(), asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in batch.values():
                for r in records:
                    counts["records"] += 1
                    if r.key is None:
                        continue
                    if r.value:
                        counts["bytes"] += len(r.value)
                        open_sessions.add(r.key)
                    if ("type", b"end") in r.headers:
                        open_sessions.discard(r.key)
                        counts["ended"] += 1
                        final = {"session_id": r.key.decode(), "kind": "session", "status": "complete"}
                        value = orjson.dumps({**final, "transcript": ""})
                        await producer.send(settings.transcripts_topic, value=value, key=r.key)

    task = asyncio.create_task(consume())
    while not consumer.assignment():  # noqa: ASYNC110 (aiokafka has no event for it)
        await asyncio.sleep(0.05)
    peer.say("ready")
    memory = peer.Memory()
    sampler = asyncio.create_task(peer.sample_every(memory, lambda: (len(open_sessions), 0), sampling))
    await peer.wait_for_stop()
    sampling.set()
    stop.set()
    await sampler
    await task
    await consumer.stop()
    await producer.stop()
    return {**counts, "memory": memory.__dict__}


def main() -> None:
    peer.main_with_settings(run)


if __name__ == "__main__":
    main()
