"""Word timestamps end to end: manual endpoint, real broker, real worker, tones emulator."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from pipeline.emulator.engines.tones import synthesize, word_times
from pipeline.schemas import validate
from tests.support.config import worker_config
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.harness import WorkerHarness, produce
from tests.support.scripts import audio_record, control_record, read_topic

pytestmark = pytest.mark.kafka

# The tones recognizer finds a word's onset on 1 ms frames under a 5 ms raised-cosine ramp (≤ 3 ms
# late) and its end exactly len(word) symbols after the onset; the emulator rounds to 1 ms and the
# worker truncates to 1 µs. 5 ms covers all of it; a wrong connection offset or fill accounting is
# off by at least one 100 ms frame.
TOLERANCE_MS = 5.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:
        yield emu


@pytest.fixture
async def harness(kafka_bootstrap: str, emulator: EmulatorThread) -> AsyncIterator[WorkerHarness]:
    h = WorkerHarness(worker_config(kafka_bootstrap, emulator.base_url, topic_partitions=1, drain_deadline_s=20))
    await h.prepare()
    await h.start()
    yield h
    await h.stop()


async def test_manual_turn_end_words_are_the_scripts_word_times_in_session_audio(
    harness: WorkerHarness, kafka_bootstrap: str
) -> None:
    config = harness.config
    session = f"words-{uuid.uuid4().hex[:6]}"
    seq = itertools.count()
    records = []
    expected: list[list[tuple[str, float, float]]] = []
    at_ms = 0.0
    for text in ["Alpha bravo charlie.", "Delta echo."]:
        pcm = synthesize(text, 16000, "pcm_s16le", lead_ms=200, tail_ms=300)
        expected.append([(w, at_ms + s, at_ms + e) for w, s, e in word_times(text, lead_ms=200)])
        for start in range(0, len(pcm), 3200):
            records.append(
                audio_record(session, next(seq), pcm[start : start + 3200], "pcm_s16le", 16000, endpoint="manual")
            )
        records.append(control_record(session, next(seq), "finalize"))
        at_ms += len(pcm) / 32.0  # 16 kHz s16: 32 bytes per ms
    records.append(control_record(session, next(seq), "end"))
    await produce(kafka_bootstrap, config.audio_topic, records)

    def ended(got: list[dict[str, Any]]) -> bool:
        return any(r["session_id"] == session and r["type"] == "session.end" for r in got)

    published = await read_topic(kafka_bootstrap, config.turns_topic, until=ended)
    turns = [r for r in published if r["session_id"] == session]
    for record in turns:
        validate("turn", record)
    ends = [r for r in turns if r["type"] == "turn.end"]
    assert [r["transcript"] for r in ends] == ["Alpha bravo charlie.", " Delta echo."]
    for record, words in zip(ends, expected, strict=True):
        got = [(w["word"], w["start_ms"], w["end_ms"]) for w in record["words"]]
        assert [w for w, _, _ in got] == [w for w, _, _ in words]
        for (_, start, end), (_, want_start, want_end) in zip(got, words, strict=True):
            assert abs(start - want_start) <= TOLERANCE_MS and abs(end - want_end) <= TOLERANCE_MS
        assert record["language"] == "en" and record["duration_ms"] > 0
    updates = [r for r in turns if r["type"] == "turn.update"]
    assert updates and all("words" in r for r in updates)
