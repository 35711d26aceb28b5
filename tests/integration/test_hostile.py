"""Hostile input and hostile peers, through the real worker and a real broker.

No record and no provider message may crash the worker or stall a partition: each case puts healthy
sessions around the hostile one, on one partition, and checks that the healthy ones come out exact,
the hostile one produces exactly one clear outcome, and the committed offset reaches the end.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import generate_latest
from websockets.asyncio.client import ClientConnection

from pipeline import metrics
from pipeline.emulator.engines.tones import synthesize
from pipeline.records import AudioFormat
from pipeline.settings import Settings
from pipeline.stt.client import open_socket
from tests.support.config import worker_config
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.fake_provider import error_event, huge_message, polite, reject_upgrade, running_fake_provider
from tests.support.harness import WorkerHarness, produce
from tests.support.poison import produce_bad_header_name
from tests.support.scripts import (
    Plan,
    Record,
    audio_record,
    check_turn_stream,
    committed_offset,
    control_record,
    read_topic,
    stream,
)

pytestmark = pytest.mark.kafka

SECRET = "sk-test-0123456789abcdef-SECRET"


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:
        yield emu


def config_for(bootstrap: str, base_url: str, **overrides: Any) -> Settings:
    settings: dict[str, Any] = {"topic_partitions": 1, "drain_deadline_s": 20, "commit_interval_ms": 100}
    return worker_config(bootstrap, base_url, **{**settings, **overrides})


@pytest.fixture
async def started(request: pytest.FixtureRequest) -> AsyncIterator[list[WorkerHarness]]:
    harnesses: list[WorkerHarness] = []
    yield harnesses
    for harness in harnesses:
        await harness.stop()


def tone_session(session_id: str, text: str, rate: int = 16000) -> list[Record]:
    pcm = synthesize(text, rate, "pcm_s16le")
    chunk = rate // 10 * 2
    offsets = range(0, len(pcm), chunk)
    records = [audio_record(session_id, i, pcm[o : o + chunk], "pcm_s16le", rate) for i, o in enumerate(offsets)]
    return [*records, control_record(session_id, len(records), "end")]


def ended(n: int) -> Any:
    return lambda events: sum(e["type"] == "session.end" for e in events) == n


def finals(transcripts: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {t["session_id"]: (t["status"], t["transcript"]) for t in transcripts if t["kind"] == "session"}


async def end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def wait_committed_to_end(bootstrap: str, config: Settings, limit_s: float = 30) -> None:
    end = await end_offset(bootstrap, config.audio_topic)
    async with asyncio.timeout(limit_s):
        while await committed_offset(bootstrap, config) != end:  # noqa: ASYNC110  # polling the broker
            await asyncio.sleep(0.2)


async def test_a_full_session_cap_never_starves_open_sessions(
    kafka_bootstrap: str, emulator: EmulatorThread, started: list[WorkerHarness]
) -> None:
    """Defect: with the cap reached, the third session's first record blocked the whole partition; the
    two open sessions' later audio waited behind it, the STT service closed them for idleness, and
    both ended `failed` with half their text. Now only the third key waits."""
    config = config_for(kafka_bootstrap, emulator.base_url, max_sessions=2)
    harness = WorkerHarness(config)
    await harness.prepare()
    started.append(harness)
    await harness.start()
    tag = uuid.uuid4().hex[:6]
    plan = Plan.of(
        {
            f"a-{tag}": ["Alpha bravo charlie.", "Delta echo foxtrot golf."],
            f"b-{tag}": ["Hotel india juliet.", "Kilo lima mike november."],
            f"c-{tag}": ["Oscar papa alpha.", "Bravo charlie delta."],
        },
        fmt=("pcm_s16le", 16000),
    )
    await stream(kafka_bootstrap, config.audio_topic, plan)  # realtime, interleaved, one partition
    transcripts = await read_topic(
        kafka_bootstrap, config.transcripts_topic, until=lambda rs: len(finals(rs)) == 3, limit_s=90
    )
    assert finals(transcripts) == {s: ("complete", plan.text(s)) for s in plan.sessions}
    assert harness.worker.snapshot().counters.deferred >= 1  # the third key did wait for a slot
    await wait_committed_to_end(kafka_bootstrap, config)


async def test_poison_records_never_stop_the_worker(
    kafka_bootstrap: str, emulator: EmulatorThread, started: list[WorkerHarness]
) -> None:
    """Each of these crashed the worker, stalled its partition or failed every transaction before."""
    config = config_for(kafka_bootstrap, emulator.base_url)
    harness = WorkerHarness(config)
    await harness.prepare()
    tag = uuid.uuid4().hex[:6]
    before, after = f"before-{tag}", f"after-{tag}"
    audio = [("type", b"audio"), ("seq", b"0"), ("encoding", b"pcm_s16le"), ("sample_rate", b"16000")]
    poison: list[Record] = [
        (b"digits-seq", [("type", b"audio"), ("seq", b"9" * 5000), *audio[2:]], b"\x00\x00"),
        (b"long-seq", [("type", b"audio"), ("seq", b"1" * 30), *audio[2:]], b"\x00\x00"),
        (b"digits-rate", [*audio[:3], ("sample_rate", b"1" * 4301)], b"\x00\x00"),
        (b"k" * 600_000, audio, b"\x00\x00"),
        (b"big-bad", [("type", b"bogus"), ("seq", b"0")], b"\x01" * 800_000),
    ]
    await produce(kafka_bootstrap, config.audio_topic, tone_session(before, "Before the storm."), partition=0)
    await produce(kafka_bootstrap, config.audio_topic, poison[:2], partition=0)
    bad_name_offset = await produce_bad_header_name(
        kafka_bootstrap, config.audio_topic, 0, b"bad-name", b"\x00\x00", headers=[(b"type", b"audio")]
    )
    await produce(kafka_bootstrap, config.audio_topic, poison[2:], partition=0)
    await produce(kafka_bootstrap, config.audio_topic, tone_session(after, "After the storm."), partition=0)
    started.append(harness)
    await harness.start()

    transcripts = await read_topic(
        kafka_bootstrap, config.transcripts_topic, until=lambda rs: len(finals(rs)) == 2, limit_s=60
    )
    assert finals(transcripts) == {
        before: ("complete", "Before the storm."),
        after: ("complete", "After the storm."),
    }
    letters = await read_topic(kafka_bootstrap, config.dead_letter_topic, until=lambda rs: len(rs) >= 6, limit_s=30)
    await asyncio.sleep(1.0)
    letters = await read_topic(kafka_bootstrap, config.dead_letter_topic, until=lambda rs: len(rs) >= 6, limit_s=5)
    assert Counter(letter["reason"] for letter in letters) == Counter(
        {"oversized": 3, "bad_header": 2, "unparseable": 1}
    )
    undecodable = next(letter for letter in letters if letter["reason"] == "unparseable")
    assert undecodable["source"]["offset"] == bad_name_offset
    big = next(letter for letter in letters if letter["value_size"] == 800_000)
    assert big["value_truncated"] is True and len(big["value_sha256"]) == 64
    assert harness.alive
    assert harness.worker.snapshot().counters.corrupt_records == 1
    await wait_committed_to_end(kafka_bootstrap, config)


async def test_an_in_stream_429_is_retried(kafka_bootstrap: str, started: list[WorkerHarness]) -> None:
    with running_fake_provider(lambda i: error_event(429, "concurrency_limited") if i == 0 else polite()) as fake:
        config = config_for(kafka_bootstrap, fake.base_url)
        harness = WorkerHarness(config)
        await harness.prepare()
        started.append(harness)
        await harness.start()
        session_id = f"busy-{uuid.uuid4().hex[:6]}"
        await produce(kafka_bootstrap, config.audio_topic, tone_session(session_id, "Try again."))
        events = await read_topic(
            kafka_bootstrap, config.turns_topic, until=lambda rs: any(r["type"] == "session.end" for r in rs)
        )
    errors = [e["error"] for e in events if e["type"] == "session.error"]
    assert [(e["status_code"], e["error_code"], e["retryable"]) for e in errors][:1] == [
        (429, "concurrency_limited", True)
    ]
    assert events[-1]["status"] == "complete"
    assert len(fake.connections()) >= 2


async def test_a_crashed_session_task_frees_its_slot_and_is_published_failed(
    kafka_bootstrap: str, emulator: EmulatorThread, started: list[WorkerHarness]
) -> None:
    """Defect: a crash in a session's task kept its slot and pinned the watermark until restart."""
    config = config_for(kafka_bootstrap, emulator.base_url, max_sessions=1)
    tag = uuid.uuid4().hex[:6]
    crash, fine = f"crash-{tag}", f"fine-{tag}"
    calls: list[str] = []

    async def connect(fmt: AudioFormat) -> ClientConnection:
        calls.append("connect")
        if len(calls) == 1:
            raise ZeroDivisionError("a bug in the session's task")
        return await open_socket(emulator.base_url, fmt, "test-key", config.stt_version)

    harness = WorkerHarness(config, connect=connect)
    await harness.prepare()
    await produce(kafka_bootstrap, config.audio_topic, tone_session(crash, "Never heard."), partition=0)
    await produce(kafka_bootstrap, config.audio_topic, tone_session(fine, "Heard fine."), partition=0)
    started.append(harness)
    await harness.start()
    transcripts = await read_topic(
        kafka_bootstrap, config.transcripts_topic, until=lambda rs: len(finals(rs)) == 2, limit_s=60
    )
    assert finals(transcripts) == {crash: ("failed", ""), fine: ("complete", "Heard fine.")}
    events = await read_topic(kafka_bootstrap, config.turns_topic, until=ended(2))
    check_turn_stream([e for e in events if e["session_id"] == fine])
    crashed = [e for e in events if e["session_id"] == crash and e["type"] == "session.error"]
    assert [e["error"]["error_code"] for e in crashed] == ["worker_error"]
    assert harness.worker.snapshot().counters.session_crashes == 1
    await wait_committed_to_end(kafka_bootstrap, config)
    assert harness.worker.snapshot().sessions == ()


async def test_oversized_provider_text_fails_only_its_session(
    kafka_bootstrap: str, started: list[WorkerHarness]
) -> None:
    """Defect: a provider's 2 MB `turn.update` failed every transaction of the partition, forever."""
    with running_fake_provider(lambda i: huge_message(2 * 2**20) if i == 0 else polite("fine")) as fake:
        config = config_for(kafka_bootstrap, fake.base_url)
        harness = WorkerHarness(config)
        await harness.prepare()
        tag = uuid.uuid4().hex[:6]
        huge, other = f"huge-{tag}", f"other-{tag}"
        await produce(kafka_bootstrap, config.audio_topic, tone_session(huge, "Say a lot."), partition=0)
        await produce(kafka_bootstrap, config.audio_topic, tone_session(other, "Say little."), partition=0)
        started.append(harness)
        await harness.start()
        transcripts = await read_topic(
            kafka_bootstrap, config.transcripts_topic, until=lambda rs: len(finals(rs)) == 2, limit_s=60
        )
        events = await read_topic(kafka_bootstrap, config.turns_topic, until=ended(2))
    status = finals(transcripts)
    assert status[huge][0] == "failed" and status[other][0] == "complete"
    errors = [e["error"]["error_code"] for e in events if e["session_id"] == huge and e["type"] == "session.error"]
    assert errors == ["oversized_output"]
    assert harness.worker.snapshot().counters.transaction_failures == 0
    await wait_committed_to_end(kafka_bootstrap, config)


async def test_a_provider_echoing_the_key_leaks_it_nowhere(
    kafka_bootstrap: str, started: list[WorkerHarness], caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: a 401 upgrade body was copied verbatim into `session.error.message`."""
    caplog.set_level(logging.DEBUG)
    with running_fake_provider(reject_upgrade(401, "unauthorized", echo_auth=True)) as fake:
        config = config_for(kafka_bootstrap, fake.base_url).replace(api_key=SECRET)
        harness = WorkerHarness(config)
        await harness.prepare()
        started.append(harness)
        await harness.start()
        session_id = f"leak-{uuid.uuid4().hex[:6]}"
        await produce(kafka_bootstrap, config.audio_topic, tone_session(session_id, "Who am I?"))
        events = await read_topic(
            kafka_bootstrap, config.turns_topic, until=lambda rs: any(r["type"] == "session.end" for r in rs)
        )
        (seen,) = fake.connections()
    assert seen.header("Authorization") == f"Bearer {SECRET}"  # the key did reach the provider
    assert events[-1]["status"] == "failed"
    error = next(e["error"] for e in events if e["type"] == "session.error")
    assert error["status_code"] == 401 and "[redacted]" in error["message"]
    for topic in (config.turns_topic, config.transcripts_topic, config.sessions_topic, config.dead_letter_topic):
        raw = await read_raw(kafka_bootstrap, topic)
        assert SECRET.encode() not in raw, topic
    assert SECRET not in generate_latest(metrics.REGISTRY).decode()
    assert SECRET not in caplog.text  # absence of the secret in every log line, at every level


async def read_raw(bootstrap: str, topic: str) -> bytes:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out = b""
    try:
        for _ in range(5):
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    out += (record.key or b"") + (record.value or b"")
    finally:
        await consumer.stop()
    return out
