"""The worker end to end: real Kafka broker, real worker, STT emulator (tones engine) over WebSockets."""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.emulator.engines.tones import script_text, synthesize
from pipeline.kafka.topics import TopicSetupError, ensure_topics
from pipeline.schemas import validate
from pipeline.settings import Settings
from pipeline.worker import Worker
from tests.support.config import worker_config
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.harness import WorkerHarness, produce
from tests.support.kafka import free_ports
from tests.support.scripts import (
    FORMATS,
    WORDS,
    audio_record,
    check_turn_stream,
    control_record,
    read_topic,
    session_records,
)

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:  # default realtime budget: the worker must pace
        yield emu


def make_config(bootstrap: str, emu: EmulatorThread, partitions: int = 1) -> Settings:
    return worker_config(
        bootstrap, emu.base_url, topic_partitions=partitions, drain_deadline_s=20, commit_interval_ms=200
    )


@pytest.fixture
async def harness(kafka_bootstrap: str, emulator: EmulatorThread) -> AsyncIterator[WorkerHarness]:
    h = WorkerHarness(make_config(kafka_bootstrap, emulator))
    await h.prepare()
    yield h
    await h.stop()


@pytest.fixture
async def running_worker(harness: WorkerHarness) -> tuple[Worker, Settings]:
    return await harness.start(), harness.config


def sessions_ended(n: int) -> Any:
    return lambda records: sum(r["kind"] == "session" for r in records) >= n


async def test_twenty_interleaved_sessions_mixed_formats_exact_finals(
    harness: WorkerHarness, kafka_bootstrap: str, emulator: EmulatorThread
) -> None:
    """A backlog: all audio is in the topic before the worker starts; it must pace, not burst."""
    config = harness.config
    rng = random.Random(20)
    expected: dict[str, list[str]] = {}
    streams = []
    for n in range(20):
        session = f"call-{n:02d}-{uuid.uuid4().hex[:6]}"
        turns = [" ".join(rng.sample(WORDS, rng.randint(1, 4))).capitalize() + p for p in (".", "?", "!")][
            : rng.randint(1, 3)
        ]
        script: list[str | int] = list(turns)
        encoding, rate = FORMATS[n % len(FORMATS)]
        expected[session] = [t if i == 0 else " " + t for i, t in enumerate(turns)]
        assert "".join(expected[session]) == script_text(script)
        streams.append(session_records(session, script, encoding, rate, rng))
    # Interleave all sessions' chunks on one partition, each session's own order kept.
    interleaved = []
    cursors = [iter(s) for s in streams]
    while cursors:
        cursor = rng.choice(cursors)
        item = next(cursor, None)
        if item is None:
            cursors.remove(cursor)
        else:
            interleaved.append(item)
    before = len(emulator.stats()["sessions"])
    await produce(kafka_bootstrap, config.audio_topic, interleaved)
    worker = await harness.start()

    transcripts = await read_topic(kafka_bootstrap, config.transcripts_topic, until=sessions_ended(20))
    for record in transcripts:
        validate("transcript", record)
    finals = {r["session_id"]: r for r in transcripts if r["kind"] == "session"}
    assert set(finals) == set(expected)
    for session, turns in expected.items():
        assert finals[session]["status"] == "complete"
        assert finals[session]["transcript"] == "".join(turns)
        per_turn = [r["transcript"] for r in transcripts if r["session_id"] == session and r["kind"] == "turn"]
        assert per_turn == turns
    assert len({(r["session_id"], r["seq"]) for r in transcripts}) == len(transcripts)

    total = sum(len(t) for t in expected.values()) + 20 * 2  # at least turn.start/end per turn + session.*
    events = await read_topic(
        kafka_bootstrap, config.turns_topic, until=lambda rs: sum(r["type"] == "session.end" for r in rs) >= 20
    )
    assert len(events) >= total
    by_session = check_turn_stream(events)
    for session, turns in expected.items():
        assert [e["transcript"] for e in by_session[session] if e["type"] == "turn.end"] == turns
        assert all(e["request_id"] for e in by_session[session][1:])
    stats = emulator.stats()
    ours = stats["sessions"][before:]
    assert len(ours) == 20
    assert not any(s["overloaded"] for s in ours), "the worker sent audio faster than realtime"
    assert all(s["close_code"] == 1000 for s in ours)
    assert worker.snapshot().counters.sessions_ended == {"complete": 20}
    assert not any(s["fault"] for s in ours)
    await wait_for_tombstones(kafka_bootstrap, config.sessions_topic, set(expected))


async def wait_for_tombstones(bootstrap: str, topic: str, sessions: set[str]) -> None:
    """Each finished session's checkpoint is written, validated, then tombstoned once the offset passes it."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    latest: dict[str, dict[str, Any] | None] = {}
    seen_complete: set[str] = set()
    try:
        async with asyncio.timeout(30):
            while not (set(latest) >= sessions and all(latest[s] is None for s in sessions)):
                for items in (await consumer.getmany(timeout_ms=200)).values():
                    for item in items:
                        assert item.key is not None
                        value = None if item.value is None else orjson.loads(item.value)
                        if value is not None:
                            validate("checkpoint", value)
                            if value["status"] == "complete":
                                seen_complete.add(item.key.decode())
                        latest[item.key.decode()] = value
    finally:
        await consumer.stop()
    assert seen_complete >= sessions


async def test_manual_endpoint_finalize_splits_turns(
    running_worker: tuple[Worker, Settings], kafka_bootstrap: str
) -> None:
    _, config = running_worker
    rng = random.Random(3)
    records = []
    seq = itertools.count()
    for i, text in enumerate(["Push to talk.", "Second press."]):
        pcm = synthesize(text, 16000, "pcm_s16le", lead_ms=200, tail_ms=300)
        for start in range(0, len(pcm), 3200):
            records.append(
                audio_record("ptt", next(seq), pcm[start : start + 3200], "pcm_s16le", 16000, endpoint="manual")
            )
        records.append(control_record("ptt", next(seq), "finalize"))
        del i
    records.append(control_record("ptt", next(seq), "end"))
    del rng
    await produce(kafka_bootstrap, config.audio_topic, records)
    transcripts = await read_topic(kafka_bootstrap, config.transcripts_topic, until=sessions_ended(1))
    assert [r["transcript"] for r in transcripts if r["kind"] == "turn"] == ["Push to talk.", " Second press."]
    assert transcripts[-1]["transcript"] == "Push to talk. Second press."
    assert transcripts[-1]["status"] == "complete"


async def test_bad_input_goes_to_dead_letter_and_others_finish(
    running_worker: tuple[Worker, Settings], kafka_bootstrap: str
) -> None:
    worker, config = running_worker
    good = synthesize("Still fine.", 16000, "pcm_s16le")
    half = len(good) // 2
    records = [
        audio_record("good", 0, good[:half], "pcm_s16le", 16000),
        # no session id
        (b"", [(k, v.encode()) for k, v in {"type": "audio", "seq": "0", "encoding": "pcm_s16le"}.items()], b"\0\0"),
        # bad headers: missing seq, unknown type, non-numeric rate, not UTF-8
        (b"bad1", [("type", b"audio"), ("encoding", b"pcm_s16le"), ("sample_rate", b"16000")], b"\0\0"),
        control_record("bad2", 0, "pause"),
        audio_record("bad3", 0, b"\0\0", "pcm_s16le", 0),
        (b"bad4", [("type", b"\xff\xfe"), ("seq", b"0")], b""),
        # unknown encoding
        audio_record("bad5", 0, b"\0\0", "pcm_u8", 16000),
        # partial sample
        audio_record("bad6", 0, b"\0\0\0", "pcm_s16le", 16000),
        # encoding change mid-session
        audio_record("good", 1, b"\0" * 800, "pcm_mulaw", 8000),
        # duplicate (dropped and counted, not dead-lettered)
        audio_record("good", 0, good[:half], "pcm_s16le", 16000),
        audio_record("good", 1, good[half:], "pcm_s16le", 16000),
        control_record("good", 2, "end"),
        # after end
        audio_record("good", 3, b"\0\0", "pcm_s16le", 16000),
        # finalize/end for a session that never sent audio
        control_record("ghost", 0, "end"),
    ]
    await produce(kafka_bootstrap, config.audio_topic, records)
    letters = await read_topic(kafka_bootstrap, config.dead_letter_topic, until=lambda rs: len(rs) >= 10)
    for letter in letters:
        validate("dead_letter", letter)
    reasons = Counter(letter["reason"] for letter in letters)
    assert reasons == {
        "missing_session_id": 1,
        "bad_header": 4,
        "unknown_encoding": 1,
        "partial_sample": 1,
        "encoding_changed": 1,
        "after_end": 1,
        "no_session": 1,
    }
    changed = next(letter for letter in letters if letter["reason"] == "encoding_changed")
    assert changed["session_id"] == "good" and changed["headers"]["encoding"] == "pcm_mulaw"
    assert changed["source"]["topic"] == config.audio_topic and changed["detail"]
    transcripts = await read_topic(kafka_bootstrap, config.transcripts_topic, until=sessions_ended(1))
    final = transcripts[-1]
    assert (final["session_id"], final["transcript"], final["status"]) == ("good", "Still fine.", "complete")
    assert worker.snapshot().counters.duplicates >= 1


async def test_sequence_gap_is_reported_and_session_continues(
    running_worker: tuple[Worker, Settings], kafka_bootstrap: str
) -> None:
    _, config = running_worker
    pcm = synthesize("Gap here.", 16000, "pcm_s16le")
    records = [
        audio_record("gappy", 0, pcm[:6400], "pcm_s16le", 16000),
        audio_record("gappy", 2, pcm[6400:], "pcm_s16le", 16000),  # seq 1 never arrives
        control_record("gappy", 3, "end"),
    ]
    await produce(kafka_bootstrap, config.audio_topic, records)
    events = await read_topic(
        kafka_bootstrap, config.turns_topic, until=lambda rs: any(r["type"] == "session.end" for r in rs)
    )
    errors = [e for e in events if e["type"] == "session.error"]
    assert [e["error"]["error_code"] for e in errors] == ["seq_gap"]
    assert events[-1]["status"] == "complete"


async def test_worker_commits_only_past_finished_work(
    running_worker: tuple[Worker, Settings], kafka_bootstrap: str
) -> None:
    worker, config = running_worker
    pcm = synthesize("Hold the line.", 16000, "pcm_s16le")
    first = [audio_record("first", 0, pcm, "pcm_s16le", 16000), control_record("first", 1, "end")]
    await produce(kafka_bootstrap, config.audio_topic, first)
    await read_topic(kafka_bootstrap, config.transcripts_topic, until=sessions_ended(1))
    await produce(kafka_bootstrap, config.audio_topic, [audio_record("holder", 0, pcm, "pcm_s16le", 16000)])
    for _ in range(100):
        if worker.snapshot().session("holder") is not None:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.6)  # a few commit intervals
    await worker.commit()
    holder = worker.snapshot().session("holder")
    assert holder is not None and holder.first_offset == 2
    (part,) = worker.snapshot().partitions
    tp = TopicPartition(config.audio_topic, part.partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=config.group_id)
    await consumer.start()
    try:
        assert await consumer.committed(tp) == 2  # past the finished session, held at the open session's first chunk
        await produce(kafka_bootstrap, config.audio_topic, [control_record("holder", 1, "end")])
        await read_topic(kafka_bootstrap, config.transcripts_topic, until=sessions_ended(2))
        for _ in range(100):
            await worker.commit()
            if await consumer.committed(tp) == worker.snapshot().partitions[0].position:
                break
            await asyncio.sleep(0.1)
        assert await consumer.committed(tp) == worker.snapshot().partitions[0].position == 4
    finally:
        await consumer.stop()


async def test_stopping_right_after_a_session_ends_still_publishes_its_final(
    kafka_bootstrap: str, emulator: EmulatorThread
) -> None:
    """Regression: a shutdown must never cancel a transaction and drop the finals in it."""
    pcm = synthesize("Last words.", 16000, "pcm_s16le")
    for attempt in range(5):
        harness = WorkerHarness(make_config(kafka_bootstrap, emulator))
        await harness.prepare()
        session = f"last-{attempt}"
        await produce(
            kafka_bootstrap,
            harness.config.audio_topic,
            [audio_record(session, 0, pcm, "pcm_s16le", 16000), control_record(session, 1, "end")],
        )
        worker = await harness.start()
        async with asyncio.timeout(30):
            while not worker.snapshot().counters.sessions_ended:  # noqa: ASYNC110  # stop right after it ended
                await asyncio.sleep(0.005)
        await harness.stop()
        transcripts = await read_topic(kafka_bootstrap, harness.config.transcripts_topic, until=sessions_ended(1))
        assert transcripts[-1]["transcript"] == "Last words."


async def test_muted_producer_gets_silence_so_the_turn_ends(
    running_worker: tuple[Worker, Settings], kafka_bootstrap: str
) -> None:
    """The producer stops sending mid-session (muted, no `end`): the worker keeps the STT clock going
    with encoding-correct silence, so the server's turn detection still ends the turn."""
    worker, config = running_worker
    pcm = synthesize("Are you there?", 8000, "pcm_mulaw", tail_ms=0)
    await produce(kafka_bootstrap, config.audio_topic, [audio_record("muted", 0, pcm, "pcm_mulaw", 8000)])
    events = await read_topic(
        kafka_bootstrap, config.turns_topic, until=lambda rs: any(r["type"] == "turn.end" for r in rs), limit_s=20
    )
    assert [e["transcript"] for e in events if e["type"] == "turn.end"] == ["Are you there?"]
    muted = worker.snapshot().session("muted")
    assert muted is not None and muted.silence_ms > 0
    await produce(kafka_bootstrap, config.audio_topic, [control_record("muted", 1, "end")])
    await read_topic(kafka_bootstrap, config.transcripts_topic, until=sessions_ended(1))


async def test_live_views_see_outputs_at_once_and_committed_readers_once_per_commit(
    kafka_bootstrap: str, emulator: EmulatorThread
) -> None:
    """Eager sends: with a commit interval far longer than the session, a read_uncommitted live view
    still sees the turn events as they happen; the commit at shutdown makes them visible to
    read_committed readers, each seq exactly once."""
    config = make_config(kafka_bootstrap, emulator).replace(commit_interval_ms=600_000)
    harness = WorkerHarness(config)
    await harness.prepare()
    pcm = synthesize("Live words here.", 16000, "pcm_s16le")
    await produce(kafka_bootstrap, config.audio_topic, [audio_record("live", 0, pcm, "pcm_s16le", 16000)])
    await harness.start()
    try:
        live = await read_topic(
            kafka_bootstrap,
            config.turns_topic,
            until=lambda rs: any(r["type"] == "turn.end" for r in rs),
            limit_s=20,
            isolation="read_uncommitted",
        )
        assert [e["transcript"] for e in live if e["type"] == "turn.end"] == ["Live words here."]
        await produce(kafka_bootstrap, config.audio_topic, [control_record("live", 1, "end")])
        async with asyncio.timeout(20):
            while not harness.worker.snapshot().counters.sessions_ended:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await harness.stop()
    committed = await read_topic(
        kafka_bootstrap, config.turns_topic, until=lambda rs: any(r["type"] == "session.end" for r in rs)
    )
    check_turn_stream(committed)
    assert [e["seq"] for e in live] == [e["seq"] for e in committed[: len(live)]]


async def test_missing_topics_without_permission_to_create_fail_clearly(kafka_bootstrap: str) -> None:
    config = worker_config(kafka_bootstrap, "http://127.0.0.1:1", create_topics=False)
    with pytest.raises(TopicSetupError) as refused:
        await ensure_topics(config)
    message = str(refused.value)
    assert "STT_CREATE_TOPICS" in message and config.audio_topic in message and config.sessions_topic in message


async def test_stt_unreachable_sessions_wait_and_retry(kafka_bootstrap: str) -> None:
    port = free_ports(1)[0]
    config = worker_config(kafka_bootstrap, f"http://127.0.0.1:{port}", topic_partitions=1, drain_deadline_s=30)
    harness = WorkerHarness(config)
    await harness.prepare()
    pcm = synthesize("Anyone home?", 16000, "pcm_s16le")
    records = [audio_record("early", 0, pcm, "pcm_s16le", 16000), control_record("early", 1, "end")]
    await produce(kafka_bootstrap, config.audio_topic, records)
    worker = await harness.start()
    try:
        await asyncio.sleep(2.0)  # the session is retrying against a closed port
        with running_emulator(port=port):
            transcripts = await read_topic(kafka_bootstrap, config.transcripts_topic, until=sessions_ended(1))
        assert (transcripts[-1]["transcript"], transcripts[-1]["status"]) == ("Anyone home?", "complete")
        assert worker.snapshot().counters.reconnects >= 1
        events = await read_topic(
            kafka_bootstrap, config.turns_topic, until=lambda rs: any(r["type"] == "session.end" for r in rs)
        )
        errors = [e["error"] for e in events if e["type"] == "session.error"]
        assert errors and all(e["error_code"] == "stt_connect_failed" and e["retryable"] for e in errors)
    finally:
        await harness.stop()
