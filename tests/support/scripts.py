"""Test scripts with known transcripts, and the producers and readers that carry them through Kafka.

The ``tones`` engine decodes exactly what :func:`~pipeline.emulator.engines.tones.synthesize` encodes, so
a session built here has one right answer: :class:`Plan` holds, for each session, the turn transcripts an
undisturbed run publishes. The record builders (:func:`audio_record`, :func:`control_record`,
:func:`session_records`) and the realtime producer (:func:`stream`) write ``stt.audio`` as the wire
contract says; :class:`Collector` and :func:`read_topic` read outputs as a ``read_committed`` consumer
does; :func:`check_turn_stream` checks the lifecycle of an undisturbed ``stt.turns`` stream. Used by the
integration tests, the fault suite and the bench, so they all speak about the same scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.audio import Encoding, bytes_per_sample
from pipeline.emulator.engines.tones import synthesize
from pipeline.kafka.clients import connection, kafka_options
from pipeline.schemas import validate
from pipeline.settings import Settings

# The vocabulary of test scripts (any word of the tones alphabet decodes exactly; these read well).
WORDS: Final = (  # noqa: SIM905
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa"
).split()
# A wider vocabulary for long, varied scripts (the bench).
MORE_WORDS: Final = [
    *WORDS,
    *"quebec romeo sierra tango uniform victor whiskey xray yankee zulu one two three four five six".split(),  # noqa: SIM905
]
# Every protocol encoding at a rate it is used with; sessions of a plan take them in turn.
FORMATS: Final[list[tuple[Encoding, int]]] = [
    ("pcm_mulaw", 8000),
    ("pcm_f32le", 48000),
    ("pcm_s16le", 16000),
    ("pcm_alaw", 8000),
    ("pcm_s32le", 24000),
    ("pcm_f16le", 22050),
]

Record: TypeAlias = tuple[bytes, list[tuple[str, bytes]], bytes]  # key, headers, value of an stt.audio record


# -- sessions with known scripts -----------------------------------------------------------------------------


@dataclass
class Plan:
    """Sessions with known scripts: what an undisturbed run transcribes."""

    sessions: dict[str, list[str]]  # session id → turn transcripts as published (leading spaces)
    audio: dict[str, tuple[bytes, Encoding, int]]

    @classmethod
    def make(
        cls,
        n: int,
        rng: random.Random,
        *,
        turns: tuple[int, int] = (2, 3),
        words: tuple[int, int] = (2, 4),
        tag: str = "",
    ) -> Plan:
        """``n`` sessions of ``turns`` turns of ``words`` random words, in the :data:`FORMATS` in turn."""
        texts: dict[str, list[str]] = {}
        for i in range(n):
            session_id = f"s{i:02d}-{tag or uuid.uuid4().hex[:6]}"
            texts[session_id] = [
                " ".join(rng.sample(WORDS, rng.randint(*words))).capitalize() + rng.choice(".?!")
                for _ in range(rng.randint(*turns))
            ]
        return cls.of(texts)

    @classmethod
    def of(cls, texts: Mapping[str, Sequence[str]], fmt: tuple[Encoding, int] | None = None) -> Plan:
        """Sessions speaking ``texts`` (one utterance per turn), in ``fmt`` or else the :data:`FORMATS` in turn."""
        sessions: dict[str, list[str]] = {}
        audio: dict[str, tuple[bytes, Encoding, int]] = {}
        for i, (session_id, turns) in enumerate(texts.items()):
            encoding, rate = fmt or FORMATS[i % len(FORMATS)]
            audio[session_id] = (synthesize(list(turns), rate, encoding, tail_ms=300), encoding, rate)
            sessions[session_id] = [t if k == 0 else " " + t for k, t in enumerate(turns)]
        return cls(sessions, audio)

    def text(self, session_id: str) -> str:
        """The session's final transcript: the exact concatenation of its turns."""
        return "".join(self.sessions[session_id])

    def shortest_audio_s(self) -> float:
        return min(len(pcm) / bytes_per_sample(enc) / rate for pcm, enc, rate in self.audio.values())


# -- stt.audio records ---------------------------------------------------------------------------------------


def audio_record(session: str, seq: int, data: bytes, encoding: str, rate: int, **extra: str) -> Record:
    headers = {"type": "audio", "seq": str(seq), "encoding": encoding, "sample_rate": str(rate), **extra}
    return session.encode(), [(k, v.encode()) for k, v in headers.items()], data


def control_record(session: str, seq: int, kind: str) -> Record:
    return session.encode(), [("type", kind.encode()), ("seq", str(seq).encode())], b""


def session_records(
    session: str, script: list[str | int], encoding: Encoding, rate: int, rng: random.Random, endpoint: str = "auto"
) -> list[Record]:
    """One whole session in randomly sized chunks (20-250 ms, as producers chunk however they like), then `end`."""
    pcm = synthesize(script, rate, encoding)
    sample = bytes_per_sample(encoding)
    records = []
    position = seq = 0
    while position < len(pcm):
        chunk_ms = rng.randint(20, 250)
        size = max(1, rate * chunk_ms // 1000) * sample
        records.append(audio_record(session, seq, pcm[position : position + size], encoding, rate, endpoint=endpoint))
        position += size
        seq += 1
    records.append(control_record(session, seq, "end"))
    return records


async def stream(bootstrap: str, topic: str, plan: Plan, *, realtime: bool = True, chunk_ms: int = 100) -> None:
    """All sessions concurrently, each at realtime on an absolute clock (or as fast as possible), then `end`."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    try:
        schedule: list[tuple[float, Record]] = []
        for session_id, (pcm, encoding, rate) in plan.audio.items():
            size = rate * chunk_ms // 1000 * bytes_per_sample(encoding)
            seq = 0
            for seq, start in enumerate(range(0, len(pcm), size)):
                record = audio_record(session_id, seq, pcm[start : start + size], encoding, rate)
                schedule.append((seq * chunk_ms / 1000, record))
            schedule.append(((seq + 1) * chunk_ms / 1000, control_record(session_id, seq + 1, "end")))
        schedule.sort(key=lambda item: item[0])
        t0 = time.monotonic()
        for due, (key, headers, value) in schedule:
            if realtime:
                await asyncio.sleep(max(0.0, t0 + due - time.monotonic()))
            await producer.send(topic, value=value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


# -- read_committed readers ----------------------------------------------------------------------------------


@dataclass
class Collector:
    """A read_committed reader of stt.transcripts, in the background, that timestamps what it sees."""

    bootstrap: str
    topic: str
    records: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Collector:
        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
        )
        await consumer.start()

        async def run() -> None:
            try:
                while True:
                    batch = await consumer.getmany(timeout_ms=100)
                    for items in batch.values():
                        for item in items:
                            assert item.value is not None
                            self.records.append((time.monotonic(), orjson.loads(item.value)))
                            self._arrived.set()
            finally:
                await consumer.stop()

        self._task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def finals(self) -> list[dict[str, Any]]:
        return [r for _, r in self.records if r["kind"] == "session"]

    async def wait_until(self, done: Callable[[list[dict[str, Any]]], bool], limit_s: float) -> None:
        """Until ``done(the records read so far)`` holds."""
        async with asyncio.timeout(limit_s):
            while not done([r for _, r in self.records]):
                await self._arrived.wait()
                self._arrived.clear()

    async def wait_sessions(self, n: int, limit_s: float) -> None:
        """Until ``n`` sessions have a final, then 2 s more: anything duplicated would show up by then."""
        async with asyncio.timeout(limit_s):
            while len({r["session_id"] for r in self.finals()}) < n:
                await self._arrived.wait()
                self._arrived.clear()
        await asyncio.sleep(2.0)

    def first_output_after(self, moment: float) -> float | None:
        later = [t for t, _ in self.records if t > moment]
        return min(later) - moment if later else None


async def read_topic(
    bootstrap: str | Settings,
    topic: str,
    *,
    until: Callable[[list[dict[str, Any]]], bool],
    limit_s: float = 120.0,
    isolation: str = "read_committed",
) -> list[dict[str, Any]]:
    """Read a topic from the beginning (read_committed unless told) until ``until(records)`` holds; keys
    must be session ids."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka_options(connection(bootstrap), "test-reader"),
        auto_offset_reset="earliest",
        isolation_level=isolation,
    )
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(limit_s):
            while not until(records):
                batch = await consumer.getmany(timeout_ms=200)
                for items in batch.values():
                    for item in items:
                        assert item.value is not None
                        record = orjson.loads(item.value)
                        expected_key = record.get("session_id")
                        assert (item.key.decode() if item.key is not None else None) == expected_key
                        records.append(record)
    finally:
        await consumer.stop()
    return records


async def read_settled(
    bootstrap: str, topic: str, done: Callable[[list[dict[str, Any]]], bool], limit_s: float, then_s: float = 2.0
) -> list[dict[str, Any]]:
    """Read ``topic`` from the beginning (read_committed) until ``done(records)`` or ``limit_s``, then
    ``then_s`` more, so a duplicate arriving after ``done`` holds is seen too. Keys are not checked."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    try:
        until = loop.time() + limit_s
        while loop.time() < until:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(orjson.loads(r.value) for r in records if r.value is not None)
            if done(out):
                until = min(until, loop.time() + then_s)
    finally:
        await consumer.stop()
    return out


async def committed_offset(bootstrap: str, config: Settings, partition: int = 0) -> int | None:
    """The worker group's committed offset of one input partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=config.group_id)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(config.audio_topic, partition))
    finally:
        await consumer.stop()


def check_turn_stream(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Schema-valid, no duplicates, contiguous seq per session, well-formed lifecycle."""
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        validate("turn", event)
        by_session[event["session_id"]].append(event)
    for session, items in by_session.items():
        assert [e["seq"] for e in items] == list(range(len(items))), f"{session}: seq not contiguous or duplicated"
        assert items[0]["type"] == "session.start" and items[-1]["type"] == "session.end"
        ends = [e["turn"] for e in items if e["type"] == "turn.end"]
        starts = [e["turn"] for e in items if e["type"] == "turn.start"]
        assert ends == starts == list(range(len(ends))), f"{session}: every turn must start and end once, in order"
    return by_session
