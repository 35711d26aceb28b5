"""Regression: kill -9 right after a guard truncation is committed loses nothing.

A session whose producer goes silent is truncated by the idle guard. Its socket's close then hangs
(the STT peer never answers the close frame), so the session's last records wait for the socket. The
old worker committed the finished (`truncated`) checkpoint and moved the watermark past the session
in that window, without the records the checkpoint counted; a kill -9 there lost the session's final
and left a seq gap. Now the records and the checkpoint always travel together.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.emulator.engines.tones import synthesize
from pipeline.kafka.topics import ensure_topics
from tests.support.config import worker_config
from tests.support.fake_provider import FakeProvider, never_answer, running_fake_provider
from tests.support.scripts import read_settled
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.faults]


@pytest.fixture
def hanging_stt() -> Iterator[FakeProvider]:
    with running_fake_provider(never_answer()) as fake:
        yield fake


async def _first_truncated_checkpoint(bootstrap: str, topic: str, session_id: str, limit_s: float) -> None:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(limit_s):
            while True:
                batch = await consumer.getmany(timeout_ms=50)
                for records in batch.values():
                    for record in records:
                        mine = record.key == session_id.encode() and record.value is not None
                        if mine and orjson.loads(record.value or b"{}")["status"] == "truncated":
                            return
    finally:
        await consumer.stop()


async def test_kill_after_a_committed_guard_truncation_keeps_the_final(
    kafka_bootstrap: str, hanging_stt: FakeProvider, tmp_path: Path
) -> None:
    config = worker_config(
        kafka_bootstrap,
        hanging_stt.base_url,
        topic_partitions=1,
        session_idle_timeout_s=1.5,
        commit_interval_ms=100,
    )
    await ensure_topics(config)
    session_id = f"quiet-{uuid.uuid4().hex[:6]}"
    pcm = synthesize("Hello there.", 16000, "pcm_s16le")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    headers = [("type", b"audio"), ("seq", b"0"), ("encoding", b"pcm_s16le"), ("sample_rate", b"16000")]
    await producer.send_and_wait(config.audio_topic, pcm[:3200], key=session_id.encode(), headers=headers)
    await producer.stop()

    first = WorkerProcess(config, tmp_path / "worker-1.log", "w1").start()
    try:
        await _first_truncated_checkpoint(kafka_bootstrap, config.sessions_topic, session_id, limit_s=60)
        first.kill()  # the socket's close is still hanging: the runner has not flushed yet
    finally:
        first.kill()
    second = WorkerProcess(config, tmp_path / "worker-2.log", "w1").start()  # the same pod, restarted
    try:
        transcripts = await read_settled(
            kafka_bootstrap, config.transcripts_topic, lambda rs: any(r["kind"] == "session" for r in rs), 30
        )
        turns = await read_settled(kafka_bootstrap, config.turns_topic, lambda rs: len(rs) >= 3, 5, then_s=0.5)
    finally:
        second.terminate()
    finals = [t for t in transcripts if t["session_id"] == session_id and t["kind"] == "session"]
    assert [(f["status"], f["transcript"]) for f in finals] == [("truncated", "")], second.log_tail()
    events = [e for e in turns if e["session_id"] == session_id]
    assert [e["seq"] for e in events] == list(range(len(events))), "seq gap or duplicate in stt.turns"
    assert [e["type"] for e in events] == ["session.start", "session.error", "session.end"]
    assert events[1]["error"]["error_code"] == "idle_timeout"
