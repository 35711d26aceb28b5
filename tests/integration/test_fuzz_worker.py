"""Fuzzing through the real worker and broker: malformed records of every class, a session flood, and a
provider that misbehaves in every way we know of. The worker stays up, healthy sessions stay exact,
every malformed record gives exactly one dead letter, and the committed offset reaches the end."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from pipeline.emulator.engines.tones import synthesize
from pipeline.settings import Settings
from tests.integration.test_hostile import config_for, finals, tone_session, wait_committed_to_end
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.fake_provider import (
    Behaviour,
    binary,
    close_1000_no_events,
    error_event,
    events_after_close,
    huge_message,
    invalid_json,
    json_array,
    never_answer,
    polite,
    running_fake_provider,
    turn_end_without_start,
    unknown_types,
)
from tests.support.harness import WorkerHarness, produce
from tests.support.poison import produce_bad_header_name
from tests.support.scripts import Record, check_turn_stream, read_topic

pytestmark = pytest.mark.kafka

AUDIO = [("type", b"audio"), ("seq", b"0"), ("encoding", b"pcm_s16le"), ("sample_rate", b"16000")]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:
        yield emu


@pytest.fixture
async def harnesses() -> AsyncIterator[list[WorkerHarness]]:
    started: list[WorkerHarness] = []
    yield started
    for harness in started:
        await harness.stop()


def _with(headers: list[tuple[str, bytes]], **changes: bytes | None) -> list[tuple[str, bytes]]:
    """``headers`` with some values replaced (None: removed)."""
    out = [(k, changes.get(k, v)) for k, v in headers if changes.get(k, v) is not None]
    return out  # type: ignore[return-value]


# Each class: (expected dead-letter reason, a record factory given a unique index and an rng).
MALFORMED: dict[str, tuple[str, Callable[[int, random.Random], Record]]] = {
    "no key": ("missing_session_id", lambda i, r: (b"", AUDIO, b"\x00\x00")),
    "key not utf-8": ("missing_session_id", lambda i, r: (b"\xff\xfe" + str(i).encode(), AUDIO, b"\x00\x00")),
    "key too long": ("oversized", lambda i, r: (b"k" * r.randint(257, 4000), AUDIO, b"\x00\x00")),
    "no type": ("bad_header", lambda i, r: (f"m{i}".encode(), _with(AUDIO, type=None), b"\x00\x00")),
    "bad type": ("bad_header", lambda i, r: (f"m{i}".encode(), _with(AUDIO, type=b"audi0"), b"\x00\x00")),
    "seq not a number": ("bad_header", lambda i, r: (f"m{i}".encode(), _with(AUDIO, seq=b"-1"), b"\x00\x00")),
    "seq too many digits": ("bad_header", lambda i, r: (f"m{i}".encode(), _with(AUDIO, seq=b"9" * 40), b"\x00\x00")),
    "header too long": ("oversized", lambda i, r: (f"m{i}".encode(), _with(AUDIO, seq=b"1" * 5000), b"\x00\x00")),
    "header not utf-8": ("bad_header", lambda i, r: (f"m{i}".encode(), _with(AUDIO, encoding=b"\xc3("), b"\0\0")),
    "unknown encoding": ("unknown_encoding", lambda i, r: (f"m{i}".encode(), _with(AUDIO, encoding=b"mp3"), b"\0\0")),
    "rate out of range": ("bad_header", lambda i, r: (f"m{i}".encode(), _with(AUDIO, sample_rate=b"96000"), b"\0\0")),
    "partial sample": ("partial_sample", lambda i, r: (f"m{i}".encode(), AUDIO, b"\x00" * (2 * r.randint(0, 50) + 1))),
    "finalize with a value": (
        "bad_value",
        lambda i, r: (f"m{i}".encode(), [("type", b"finalize"), ("seq", b"0")], b"\x01"),
    ),
    "end of no session": ("no_session", lambda i, r: (f"m{i}".encode(), [("type", b"end"), ("seq", b"0")], b"")),
}


async def test_a_thousand_malformed_records_and_a_session_flood(
    kafka_bootstrap: str, emulator: EmulatorThread, harnesses: list[WorkerHarness]
) -> None:
    rng = random.Random(13)
    config = config_for(kafka_bootstrap, emulator.base_url, max_sessions=20, session_idle_timeout_s=2.0)
    harness = WorkerHarness(config)
    await harness.prepare()
    tag = uuid.uuid4().hex[:6]
    healthy = {f"ok{n}-{tag}": text for n, text in enumerate(["First one.", "Second one.", "Third one."])}
    flood = [f"flood{n}-{tag}" for n in range(60)]  # one chunk each, never an `end`
    classes = list(MALFORMED)
    malformed = [(c, MALFORMED[c][1](i, rng)) for i, c in enumerate(classes * 72)][:1000]
    flood_chunk = synthesize("Hi.", 16000, "pcm_s16le")[:3200]
    records: list[Record] = [r for _, r in malformed]
    records += [(s.encode(), AUDIO, flood_chunk) for s in flood]
    rng.shuffle(records)
    # healthy sessions stay in order, interleaved with the rest
    for session_id, text in healthy.items():
        for record in tone_session(session_id, text):
            records.insert(rng.randint(len(records) // 2, len(records)), record)
    ordered = _keep_session_order(records, healthy)
    await produce(kafka_bootstrap, config.audio_topic, ordered[: len(ordered) // 2], partition=0)
    corrupt = [
        await produce_bad_header_name(kafka_bootstrap, config.audio_topic, 0, f"c{i}".encode(), b"\x00\x00")
        for i in range(5)
    ]
    await produce(kafka_bootstrap, config.audio_topic, ordered[len(ordered) // 2 :], partition=0)
    harnesses.append(harness)
    await harness.start()

    expected_sessions = len(healthy) + len(flood)
    transcripts = await read_topic(
        kafka_bootstrap,
        config.transcripts_topic,
        until=lambda rs: len(finals(rs)) >= expected_sessions,
        limit_s=180,
    )
    status = finals(transcripts)
    assert {s: status[s] for s in healthy} == {s: ("complete", t) for s, t in healthy.items()}
    assert {status[s][0] for s in flood} == {"truncated"}  # the worker's guard, not the STT idle timeout
    letters = await read_topic(
        kafka_bootstrap, config.dead_letter_topic, until=lambda rs: len(rs) >= len(malformed) + len(corrupt)
    )
    await asyncio.sleep(1.0)
    letters = await read_topic(
        kafka_bootstrap, config.dead_letter_topic, until=lambda rs: len(rs) >= len(malformed) + len(corrupt)
    )
    assert len(letters) == len(malformed) + len(corrupt)  # exactly one per malformed record
    assert len({letter["source"]["offset"] for letter in letters}) == len(letters)
    want = Counter(MALFORMED[c][0] for c, _ in malformed) + Counter({"unparseable": len(corrupt)})
    assert Counter(letter["reason"] for letter in letters) == want
    assert {letter["source"]["offset"] for letter in letters if letter["reason"] == "unparseable"} == set(corrupt)
    events = await read_topic(
        kafka_bootstrap, config.turns_topic, until=lambda rs: sum(e["type"] == "session.end" for e in rs) >= 63
    )
    flood_errors = {e["error"]["error_code"] for e in events if e["type"] == "session.error"}
    assert flood_errors == {"idle_timeout"}
    check_turn_stream([e for e in events if e["session_id"] in healthy])
    assert harness.alive
    await wait_committed_to_end(kafka_bootstrap, config)


def _keep_session_order(records: list[Record], healthy: dict[str, str]) -> list[Record]:
    """Reorder only the healthy sessions' records among their own slots so each session stays in seq order."""
    slots: dict[bytes, list[int]] = {}
    for i, (key, _, _) in enumerate(records):
        if key.decode("utf-8", "replace") in healthy:
            slots.setdefault(key, []).append(i)
    out = list(records)
    for positions in slots.values():
        mine = sorted((records[i] for i in positions), key=lambda rec: int(dict(rec[1])["seq"]))
        for position, record in zip(positions, mine, strict=True):
            out[position] = record
    return out


# What each misbehaviour of the provider's FIRST connection leads to (later connections are polite).
PROVIDER_CASES: list[tuple[str, Callable[[], Behaviour], str, set[str]]] = [
    ("invalid json", invalid_json, "complete", {"bad_provider_message"}),
    ("a json array", json_array, "complete", {"bad_provider_message"}),
    ("a binary frame", binary, "complete", {"bad_provider_message"}),
    ("a 2 MB turn.update", lambda: huge_message(2 * 2**20), "failed", {"oversized_output"}),
    ("unknown event types", unknown_types, "complete", set()),
    ("events after close", events_after_close, "complete", set()),
    ("turn.end without start", turn_end_without_start, "complete", set()),
    ("a 429 error event", lambda: error_event(429, "concurrency_limited"), "complete", {"concurrency_limited"}),
    ("a 500.0 error event", lambda: error_event(500.0, "internal_error"), "complete", {"internal_error"}),
    ("1000 with no events", close_1000_no_events, "complete", {"stt_closed"}),
    ("never answering", never_answer, "truncated", {"drain_timeout"}),
]


async def test_a_hostile_provider_never_stops_the_worker(kafka_bootstrap: str, harnesses: list[WorkerHarness]) -> None:
    """One session per misbehaviour, in turn, through one worker: each ends with the documented outcome."""
    current: dict[str, Any] = {"behaviour": None}

    def choose(index: int) -> Behaviour:
        behaviour, current["behaviour"] = current["behaviour"], None
        return behaviour if behaviour is not None else polite()

    with running_fake_provider(choose) as fake:
        config: Settings = config_for(kafka_bootstrap, fake.base_url, drain_deadline_s=4.0)
        harness = WorkerHarness(config)
        await harness.prepare()
        harnesses.append(harness)
        await harness.start()
        tag = uuid.uuid4().hex[:6]
        outcomes: dict[str, str] = {}
        expected: dict[str, str] = {}
        codes: dict[str, set[str]] = {}
        for n, (name, make, status, error_codes) in enumerate(PROVIDER_CASES):
            session_id = f"p{n}-{tag}"
            current["behaviour"] = make()
            await produce(kafka_bootstrap, config.audio_topic, tone_session(session_id, "Hello there."), partition=0)
            transcripts = await read_topic(
                kafka_bootstrap, config.transcripts_topic, until=lambda rs, s=session_id: s in finals(rs), limit_s=90
            )
            outcomes[name] = finals(transcripts)[session_id][0]
            expected[name] = status
            codes[name] = error_codes
            assert harness.alive, name
        assert outcomes == expected
        events = await read_topic(
            kafka_bootstrap,
            config.turns_topic,
            until=lambda rs: sum(e["type"] == "session.end" for e in rs) >= len(PROVIDER_CASES),
        )
    for n, (name, *_rest) in enumerate(PROVIDER_CASES):
        mine = [e for e in events if e["session_id"] == f"p{n}-{tag}"]
        assert [e["seq"] for e in mine] == list(range(len(mine))), name
        seen = {e["error"]["error_code"] for e in mine if e["type"] == "session.error"}
        assert seen == codes[name], name
    await wait_committed_to_end(kafka_bootstrap, config)
