"""The worker end to end against every plausible server: exact finals under each emulator variant.

Where Cartesia's docs are silent (PROTOCOL-FACTS' UNCONFIRMED points) the emulator can play each
plausible alternative (:data:`pipeline.emulator.protocol.VARIANTS`). For each one (and the default
server) an in-process worker transcribes a backlog of two auto sessions and one manual session, with
the server-side buffer on (the default) and one auto connection dropped mid-session, so a reconnect
replays under that variant. The expected text is the variant's undisturbed run: the tones script
verbatim, except that a server sending no leading space on later turns concatenates them without one
(and the reconnect seam must not invent it).

A crash is the other seam: a worker process killed with SIGKILL mid-session and started again resumes
its sessions from their checkpoints on fresh connections, and must join them as an undisturbed run
would, with or without the provider's leading spaces (what the session learned rides in the checkpoint).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.emulator.engines.tones import synthesize
from pipeline.emulator.faults import Fault
from pipeline.emulator.protocol import VARIANTS, Variant
from pipeline.kafka.topics import ensure_topics
from pipeline.schemas import validate
from pipeline.settings import Settings
from pipeline.worker import Worker
from tests.support.config import worker_config
from tests.support.emulator import running_emulator
from tests.support.scripts import Collector, Record, audio_record, control_record, read_topic, session_records
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.kafka

AUTO_TURNS = ["Alpha bravo.", "Charlie delta?", "Echo foxtrot!", "Golf hotel."]
MANUAL_PRESSES = ["Push to talk.", "Second press."]
# Received audio at which one auto connection is dropped: after its second turn's `turn.end` went
# out (≈3.3 s of processed audio plus the server's 1 s buffer), before the third turn ends. The seam
# rule learns whether the provider separates turns from a connection's later turns: with a drop
# before any was seen, it assumes the documented leading space.
DROP_AT_MS = 4800.0


# A longer script for the crash: the kill comes once every session's second turn is committed, and
# several seconds of its audio must still be ahead so the kill lands mid-session.
CRASH_TURNS = [*AUTO_TURNS, "India juliet.", "Kilo lima?", "Mike november!"]


def expected_auto(variant: Variant | None, turns: list[str] = AUTO_TURNS) -> str:
    separator = "" if variant == "no_leading_space" else " "
    return separator.join(turns)


def manual_records(session: str) -> list[Record]:
    records: list[Record] = []
    seq = itertools.count()
    for text in MANUAL_PRESSES:
        pcm = synthesize(text, 16000, "pcm_s16le", lead_ms=200, tail_ms=300)
        for start in range(0, len(pcm), 3200):
            records.append(
                audio_record(session, next(seq), pcm[start : start + 3200], "pcm_s16le", 16000, endpoint="manual")
            )
        records.append(control_record(session, next(seq), "finalize"))
    records.append(control_record(session, next(seq), "end"))
    return records


async def produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for key, headers, value in records:
            await producer.send(topic, value=value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.parametrize("variant", [None, *VARIANTS], ids=lambda v: v or "default")
async def test_exact_finals_under_every_server_variant(kafka_bootstrap: str, variant: Variant | None) -> None:
    # in_stream_429 needs the limit to be hit: three sessions, two slots.
    limit = 2 if variant == "in_stream_429" else None
    variants = frozenset() if variant is None else frozenset({variant})
    with running_emulator(variants=variants, max_sessions=limit) as emu:
        emu.emulator.faults.add(Fault("drop", at_audio_ms=DROP_AT_MS, connections=1, endpoint="auto"))
        config: Settings = worker_config(kafka_bootstrap, emu.base_url, drain_deadline_s=20, commit_interval_ms=200)
        await ensure_topics(config)
        rng = random.Random(12)
        tag = uuid.uuid4().hex[:6]
        autos = [f"auto-{i}-{tag}" for i in range(2)]
        manual = f"manual-{tag}"
        records: list[Record] = []
        for session in autos:
            records += session_records(session, list(AUTO_TURNS), "pcm_s16le", 16000, rng)
        records += manual_records(manual)
        await produce(kafka_bootstrap, config.audio_topic, records)

        stop = asyncio.Event()
        worker = Worker(config)
        task = asyncio.create_task(worker.run(stop))
        try:
            transcripts = await read_topic(
                kafka_bootstrap,
                config.transcripts_topic,
                until=lambda rs: sum(r["kind"] == "session" for r in rs) >= 3,
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
        stats = emu.stats()["sessions"]
        refusals = emu.stats()["concurrency_refusals"]

    for record in transcripts:
        validate("transcript", record)
    finals = {r["session_id"]: r for r in transcripts if r["kind"] == "session"}
    assert set(finals) == {*autos, manual}
    assert all(r["status"] == "complete" for r in finals.values())
    for session in autos:
        assert finals[session]["transcript"] == expected_auto(variant)
    assert finals[manual]["transcript"] == " ".join(MANUAL_PRESSES)
    assert len({(r["session_id"], r["seq"]) for r in transcripts}) == len(transcripts)  # no final twice
    assert sum(s["fault"] == "drop" for s in stats) == 1  # one auto session recovered by reconnecting
    assert worker.snapshot().counters.sessions_ended == {"complete": 3}
    if variant == "in_stream_429":
        assert refusals > 0  # the limit was hit, and answered in-stream


def second_turn_committed(records: list[dict[str, Any]], session: str) -> bool:
    return any(r["kind"] == "turn" and r["session_id"] == session and r["turn"] >= 1 for r in records)


@pytest.mark.parametrize("variant", [None, "no_leading_space"], ids=lambda v: v or "default")
async def test_a_kill_9_mid_session_resumes_with_the_undisturbed_text(
    kafka_bootstrap: str, variant: Variant | None, tmp_path: Path
) -> None:
    variants = frozenset() if variant is None else frozenset({variant})
    with running_emulator(variants=variants) as emu:
        config: Settings = worker_config(
            kafka_bootstrap, emu.base_url, drain_deadline_s=20, commit_interval_ms=200, session_timeout_ms=6000
        )
        await ensure_topics(config)
        rng = random.Random(7)
        tag = uuid.uuid4().hex[:6]
        sessions = [f"crash-{i}-{tag}" for i in range(2)]
        records: list[Record] = []
        for session in sessions:
            records += session_records(session, list(CRASH_TURNS), "pcm_s16le", 16000, rng)
        await produce(kafka_bootstrap, config.audio_topic, records)

        worker = WorkerProcess(config, tmp_path / "w1.log", "w1")
        async with Collector(kafka_bootstrap, config.transcripts_topic) as collector:
            worker.start()
            try:
                # once every session's second turn is committed, its checkpoint holds what the seam rule learned
                await collector.wait_until(lambda rs: all(second_turn_committed(rs, s) for s in sessions), 90)
                worker.kill()
                worker.start()
                await collector.wait_sessions(len(sessions), 120)
                resumed = worker.status()["counters"]["sessions_resumed"]
            finally:
                if worker.alive:
                    await asyncio.to_thread(worker.terminate)
        records_seen = [r for _, r in collector.records]

    assert resumed == len(sessions), f"the kill must land mid-session\n{worker.log_tail()}"
    for record in records_seen:
        validate("transcript", record)
    assert len({(r["session_id"], r["seq"]) for r in records_seen}) == len(records_seen)  # no final twice
    separator = "" if variant == "no_leading_space" else " "
    for session in sessions:
        finals = [r for r in records_seen if r["kind"] == "session" and r["session_id"] == session]
        assert [(r["status"], r["transcript"]) for r in finals] == [("complete", expected_auto(variant, CRASH_TURNS))]
        turns = [r["transcript"] for r in records_seen if r["kind"] == "turn" and r["session_id"] == session]
        assert turns == [t if k == 0 else separator + t for k, t in enumerate(CRASH_TURNS)]
