"""Regression: a dead letter is written once, also when a crash makes the next owner re-read its record.

An open session holds its partition's committed offset at its resume offset, so records after it are
read again by the next owner after a crash, even those whose dead letters were committed already.
The old worker dead-lettered them again on that replay (a rejected record and one aiokafka cannot
decode alike): a kill -9 published every such letter twice. Now the transaction that commits a dead
letter also commits how far the partition's input was handled, and the next owner does not
dead-letter a record below that again.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.emulator.engines.tones import synthesize
from pipeline.kafka.topics import ensure_topics
from tests.support.config import worker_config
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.harness import produce
from tests.support.poison import produce_bad_header_name
from tests.support.scripts import Record, audio_record, committed_offset, control_record, read_settled
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

RATE = 16000
TEXT = "Alpha bravo charlie delta."


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:
        yield emu


def _session(session_id: str) -> list[Record]:
    pcm = synthesize(TEXT, RATE, "pcm_s16le")
    chunk = RATE // 10 * 2  # 100 ms
    pieces = [pcm[o : o + chunk] for o in range(0, len(pcm), chunk)]
    records = [audio_record(session_id, i, piece, "pcm_s16le", RATE) for i, piece in enumerate(pieces)]
    return [*records, control_record(session_id, len(records), "end")]


async def test_a_dead_letter_is_not_repeated_when_a_kill_9_replays_its_record(
    kafka_bootstrap: str, emulator: EmulatorThread, tmp_path: Path
) -> None:
    config = worker_config(
        kafka_bootstrap, emulator.base_url, topic_partitions=1, commit_interval_ms=100, session_idle_timeout_s=60
    )
    await ensure_topics(config)
    tag = uuid.uuid4().hex[:6]
    held, bad = f"held-{tag}", f"bad-{tag}"
    session = _session(held)
    # the held session's first audio (no `end`: it holds the committed offset), then two bad records
    await produce(kafka_bootstrap, config.audio_topic, session[:3], partition=0)
    rejected: Record = (bad.encode(), [("type", b"bogus"), ("seq", b"0")], b"")
    await produce(kafka_bootstrap, config.audio_topic, [rejected], partition=0)
    undecodable = await produce_bad_header_name(
        kafka_bootstrap, config.audio_topic, 0, b"undecodable", b"\x00\x00", headers=[(b"type", b"audio")]
    )
    rejected_at = undecodable - 1

    def lettered(letters: list[dict[str, Any]]) -> Counter[int]:
        return Counter(letter["source"]["offset"] for letter in letters)

    def both(letters: list[dict[str, Any]]) -> bool:
        return {rejected_at, undecodable} <= set(lettered(letters))

    first = WorkerProcess(config, tmp_path / "worker-1.log", "w1").start()
    try:
        letters = await read_settled(kafka_bootstrap, config.dead_letter_topic, both, 60, then_s=0)
        assert both(letters), first.log_tail()
        committed = await committed_offset(kafka_bootstrap, config)
        assert (committed or 0) < rejected_at, "the held session must hold the offset back"
        first.kill()  # the letters are committed, the offset is not past them
    finally:
        first.kill()
    second = WorkerProcess(config, tmp_path / "worker-2.log", "w1").start()  # the same pod, restarted
    try:
        await produce(kafka_bootstrap, config.audio_topic, session[3:], partition=0)
        transcripts = await read_settled(
            kafka_bootstrap,
            config.transcripts_topic,
            lambda rs: any(r["kind"] == "session" and r["session_id"] == held for r in rs),
            90,
        )
        letters = await read_settled(kafka_bootstrap, config.dead_letter_topic, both, 10, then_s=1)
        counters = second.status()["counters"]
    finally:
        second.terminate()
    finals = [(t["status"], t["transcript"]) for t in transcripts if t["kind"] == "session" and t["session_id"] == held]
    assert finals == [("complete", TEXT)], second.log_tail()
    assert lettered(letters) == {rejected_at: 1, undecodable: 1}, second.log_tail()
    assert (counters["letters_replayed"], counters["dead_letters"]) == (2, 0)  # both re-read, neither sent again
