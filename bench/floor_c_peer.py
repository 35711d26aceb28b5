"""The intake floor on librdkafka, as a bench peer: ``python -m bench.floor_c_peer SPEC.json``.

The same job as :mod:`bench.floor_peer` (consume `stt.audio` ``read_committed``, drop the audio, one
empty ``kind=session`` record per session at its `end`), on ``confluent-kafka`` (librdkafka, a C
client: fetching, decompression and record parsing happen in C threads) instead of aiokafka, with
the worker's group and fetch settings. It answers one question: how far would the floor under every
Python peer move if the Kafka client were a C one. ``--c-floor`` adds it to a run (it needs the
``bench`` extra: ``make bench`` installs it).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from bench import peer
from pipeline.settings import Settings


def consume(settings: Settings, counts: dict[str, int], open_sessions: set[bytes], assigned: threading.Event,
            stop: threading.Event) -> None:  # fmt: skip
    """The consume loop, on its own thread (librdkafka's calls block)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": settings.heartbeat_interval_ms,
            "max.poll.interval.ms": settings.max_poll_interval_ms,
            "fetch.wait.max.ms": settings.fetch_max_wait_ms,
            "fetch.min.bytes": settings.fetch_min_bytes,
        }
    )
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 2})
    consumer.subscribe([settings.audio_topic], on_assign=lambda _consumer, _partitions: assigned.set())
    try:
        while not stop.is_set():
            for r in consumer.consume(num_messages=500, timeout=0.1):
                if r.error() is not None:
                    continue
                counts["records"] += 1
                key, value = r.key(), r.value()
                if key is None:
                    continue
                if value:
                    counts["bytes"] += len(value)
                    open_sessions.add(key)
                if ("type", b"end") in (r.headers() or ()):
                    open_sessions.discard(key)
                    counts["ended"] += 1
                    final = {"session_id": key.decode(), "kind": "session", "status": "complete", "transcript": ""}
                    producer.produce(settings.transcripts_topic, value=orjson.dumps(final), key=key)
            producer.poll(0)
    finally:
        producer.flush(10)
        consumer.close()


async def run(settings: Settings) -> dict[str, Any]:
    counts = {"records": 0, "bytes": 0, "ended": 0}
    open_sessions: set[bytes] = set()
    assigned, stop = threading.Event(), threading.Event()
    task = asyncio.create_task(asyncio.to_thread(consume, settings, counts, open_sessions, assigned, stop))
    while not assigned.is_set():  # set on librdkafka's thread: no asyncio event to wait on
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    peer.say("ready")
    memory, sampling = peer.Memory(), asyncio.Event()
    sampler = asyncio.create_task(peer.sample_every(memory, lambda: (len(open_sessions), 0), sampling))
    await peer.wait_for_stop()
    sampling.set()
    stop.set()
    await sampler
    await task
    return {**counts, "memory": memory.__dict__}


def main() -> None:
    peer.main_with_settings(run)


if __name__ == "__main__":
    main()
