"""The client library: publish audio to `stt.audio` and read `stt.turns` / `stt.transcripts`, contract included.

:class:`AudioProducer` opens :class:`AudioSession` objects whose records are right by construction: the
key is the session id, ``seq`` counts from ``first_seq`` without gaps, the headers are exactly what
:func:`pipeline.records.parse` reads, and every audio chunk is whole samples. A session's format and key
are checked when it is created and each chunk before it is sent: anything the worker would reject raises
:class:`~pipeline.errors.ClientError` and sends nothing. ``send``/``finalize``/``end`` after ``end`` raise
:class:`~pipeline.errors.IllegalTransition`.

:class:`TurnsConsumer` and :class:`TranscriptsConsumer` are async iterators of the typed records of
:mod:`pipeline.contract`, ``read_committed`` by default (see README "Delivery guarantees").

Both are built from :class:`~pipeline.settings.Settings` (connection and security through
:func:`pipeline.kafka.clients.kafka_options`, topics from the settings) or wrap an aiokafka client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, Literal, Self, TypeVar

from pipeline.audio import ENCODINGS, Encoding, bytes_per_sample
from pipeline.contract import TranscriptRecord, TurnRecord
from pipeline.errors import ClientError, ContractError, IllegalTransition, KafkaSetupError
from pipeline.records import (
    DEFAULT_LIMITS,
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    MAX_SEQ,
    MIN_SAMPLE_RATE,
    Endpoint,
    InputLimits,
    Rejected,
    parse,
)
from pipeline.settings import Settings

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES: Final = 512 * 1024
"""Audio per record, at most: a longer chunk goes out as several records (well under Kafka's default
1 MiB record limit)."""


class TopicNotFound(KafkaSetupError):
    """The audio topic does not exist (the broker does not auto-create topics; the worker creates them)."""


# -- producing -----------------------------------------------------------------------------------


class AudioProducer:
    """Publishes audio sessions to the audio topic over one aiokafka producer.

    Build it with :meth:`from_settings` (it then owns its producer: ``start``/``stop`` or ``async with``
    run it), or wrap a running ``AIOKafkaProducer`` (whose life stays the caller's; use one with
    ``enable_idempotence=True`` so that retries cannot reorder a session's records).
    """

    def __init__(
        self,
        producer: Any,
        *,
        topic: str,
        limits: InputLimits = DEFAULT_LIMITS,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        owned: bool = False,
    ) -> None:
        if max_chunk_bytes < 64:
            raise ValueError(f"max_chunk_bytes must be at least 64, got {max_chunk_bytes}")
        self.producer = producer
        self.topic = topic
        self.limits = limits
        self.max_chunk_bytes = max_chunk_bytes
        self._owned = owned

    @classmethod
    def from_settings(
        cls, settings: Settings, *, topic: str | None = None, role: str = "produce", **options: Any
    ) -> Self:
        """A producer with the settings' connection and security (``kafka_options(settings, role)``; the
        role names the client id), idempotent with ``acks="all"``; ``topic`` defaults to
        ``settings.audio_topic``; ``options`` go to ``AIOKafkaProducer``."""
        from aiokafka import AIOKafkaProducer

        from pipeline.kafka.clients import kafka_options

        config = {**kafka_options(settings, role), "enable_idempotence": True, "acks": "all", **options}
        return cls(AIOKafkaProducer(**config), topic=topic or settings.audio_topic, owned=True)

    async def start(self) -> None:
        """Start the producer if this object owns it."""
        if self._owned:
            await self.producer.start()

    async def stop(self) -> None:
        """Flush and stop the producer if this object owns it."""
        if self._owned:
            await self.producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def wait_for_topic(self, timeout_s: float = 10.0) -> None:
        """Return once the topic's metadata is known.

        :raises TopicNotFound: if the topic does not appear within ``timeout_s``.
        """
        from aiokafka.errors import UnknownTopicOrPartitionError

        try:
            await asyncio.wait_for(self.producer.partitions_for(self.topic), timeout_s)
        except (TimeoutError, UnknownTopicOrPartitionError):
            raise TopicNotFound(f"topic {self.topic!r} does not exist (the worker creates it at start)") from None

    def session(
        self,
        session_id: str,
        *,
        encoding: Encoding,
        sample_rate: int,
        endpoint: Endpoint = "auto",
        channels: int = 1,
        model: str | None = None,
        language: str | None = None,
        first_seq: int = 0,
    ) -> AudioSession:
        """A new session (nothing is sent yet); ``first_seq`` continues a session another producer began.

        :raises ClientError: if the worker would reject the session id or the format.
        """
        return AudioSession(
            self,
            session_id,
            AudioHeaders(encoding, sample_rate, endpoint, channels, model, language),
            first_seq=first_seq,
        )


@dataclass(frozen=True, slots=True)
class AudioHeaders:
    """The format an audio session declares on each audio record."""

    encoding: Encoding
    sample_rate: int
    endpoint: Endpoint = "auto"
    channels: int = 1
    model: str | None = None
    language: str | None = None

    def check(self) -> None:
        """:raises ClientError: on a value the worker rejects (with the allowed ones)."""
        if self.encoding not in ENCODINGS:
            raise ClientError(f"encoding {self.encoding!r} is not one of {', '.join(ENCODINGS)}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int):
            raise ClientError(f"sample_rate must be an int, got {type(self.sample_rate).__name__}")
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ClientError(f"sample_rate {self.sample_rate} is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise ClientError(f"channels must be an int, got {type(self.channels).__name__}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ClientError(f"channels {self.channels} is outside 1..{MAX_CHANNELS}")
        if self.endpoint not in ("auto", "manual"):
            raise ClientError(f"endpoint must be auto or manual, got {self.endpoint!r}")

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample on every channel: a chunk is a whole number of these."""
        return bytes_per_sample(self.encoding) * self.channels

    def headers(self) -> dict[str, str]:
        out = {
            "encoding": self.encoding,
            "sample_rate": str(self.sample_rate),
            "channels": str(self.channels),
            "endpoint": self.endpoint,
        }
        if self.model:
            out["model"] = self.model
        if self.language:
            out["language"] = self.language
        return out


SessionState = Literal["open", "ended"]


class AudioSession:
    """One session's records: :meth:`send` audio, :meth:`finalize` (manual endpoint), then :meth:`end`.

    Records are enqueued in call order; a delivery failure of an earlier record is raised by the next
    call. :meth:`end` (and :meth:`flush`) return once every record of the session is delivered.
    """

    def __init__(self, producer: AudioProducer, session_id: str, fmt: AudioHeaders, *, first_seq: int = 0) -> None:
        fmt.check()
        if not isinstance(session_id, str) or not session_id:
            raise ClientError("the session id must be a non-empty string")
        try:
            key = session_id.encode("utf-8")
        except UnicodeEncodeError:
            raise ClientError(f"the session id {session_id!r} is not UTF-8 text") from None
        if isinstance(first_seq, bool) or not isinstance(first_seq, int) or not 0 <= first_seq <= MAX_SEQ:
            raise ClientError(f"first_seq must be an int within 0..{MAX_SEQ}, got {first_seq!r}")
        self._producer = producer
        self.session_id = session_id
        self.format = fmt
        self._key = key
        self._audio_headers = fmt.headers()
        self._seq = first_seq
        self._state: SessionState = "open"
        self._pending: deque[asyncio.Future[Any]] = deque()
        self.records_sent = 0
        self.audio_bytes_sent = 0
        # The worker's own parser judges the key and headers once, so every record is accepted.
        for kind, value in (("audio", b""), ("end", b"")):
            try:
                parse(self._key, self._encoded(kind), value, limits=producer.limits)
            except Rejected as exc:
                raise ClientError(f"the worker would reject this session's records: {exc}") from None

    @property
    def seq(self) -> int:
        """The ``seq`` of the next record."""
        return self._seq

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def audio_seconds_sent(self) -> float:
        return self.audio_bytes_sent / self.format.frame_bytes / self.format.sample_rate

    def _encoded(self, kind: str) -> list[tuple[str, bytes]]:
        headers = {"type": kind, "seq": str(self._seq), **(self._audio_headers if kind == "audio" else {})}
        return [(name, value.encode("utf-8")) for name, value in headers.items()]

    def _check_open(self, event: str) -> None:
        if self._state != "open":
            raise IllegalTransition("AudioSession", self._state, event)
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    async def _send(self, kind: str, value: bytes) -> None:
        if self._seq > MAX_SEQ:
            raise ClientError(f"session {self.session_id!r} has used every seq up to {MAX_SEQ}")
        future = await self._producer.producer.send(
            self._producer.topic, value=value, key=self._key, headers=self._encoded(kind)
        )
        self._pending.append(future)
        self._seq += 1
        self.records_sent += 1

    async def send(self, chunk: bytes | bytearray | memoryview) -> None:
        """Publish audio in the session's format; a chunk longer than the producer's ``max_chunk_bytes``
        goes out as several records. An empty chunk sends nothing.

        :raises ClientError: if ``chunk`` is not bytes or not a whole number of samples (nothing is sent).
        :raises IllegalTransition: after :meth:`end`.
        """
        self._check_open("send")
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise ClientError(f"an audio chunk must be bytes, got {type(chunk).__name__}")
        data = bytes(chunk)
        frame = self.format.frame_bytes
        if len(data) % frame:
            raise ClientError(
                f"{len(data)} bytes is not a whole number of {frame}-byte samples "
                f"({self.format.encoding}, {self.format.channels} ch)"
            )
        step = max(frame, self._producer.max_chunk_bytes // frame * frame)
        for offset in range(0, len(data), step):
            piece = data[offset : offset + step]
            await self._send("audio", piece)
            self.audio_bytes_sent += len(piece)

    async def finalize(self) -> None:
        """Ask the STT service to finalize what it has heard (a turn ends; manual endpoint).

        :raises IllegalTransition: after :meth:`end`.
        """
        self._check_open("finalize")
        await self._send("finalize", b"")

    async def end(self) -> None:
        """End the session, and wait until all its records are delivered.

        :raises IllegalTransition: if it has ended already.
        """
        self._check_open("end")
        await self._send("end", b"")
        self._state = "ended"
        await self.flush()

    async def flush(self) -> None:
        """Wait until every record sent so far is delivered (raises the first delivery failure)."""
        while self._pending:
            await self._pending.popleft()


# -- consuming -----------------------------------------------------------------------------------

R = TypeVar("R", TurnRecord, TranscriptRecord)


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A record of an output topic that is not a valid contract record (skipped by the consumers)."""

    topic: str
    partition: int
    offset: int
    error: ContractError

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}: {self.error}"


InvalidHandler = Callable[[InvalidRecord], None]


def _log_invalid(record: InvalidRecord) -> None:
    log.warning("skipping a record that breaks the contract at %s", record)


class _RecordConsumer(Generic[R]):
    """An async iterator of one output topic's typed records over an ``AIOKafkaConsumer``."""

    record_type: ClassVar[type[Any]]
    topic_setting: ClassVar[str]

    def __init__(self, consumer: Any, topic: str, *, on_invalid: InvalidHandler = _log_invalid, owned: bool = False):
        self.consumer = consumer
        self.topic = topic
        self.on_invalid = on_invalid
        self._owned = owned
        self._ready: deque[R] = deque()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        topic: str | None = None,
        group_id: str | None = None,
        from_beginning: bool = False,
        isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed",
        on_invalid: InvalidHandler = _log_invalid,
        role: str = "consume",
        **options: Any,
    ) -> Self:
        """A consumer with the settings' connection and security; ``topic`` defaults to the settings' topic.

        Without ``group_id`` it reads every partition and commits nothing; with one, it joins that group
        (offsets auto-committed, aiokafka's default). ``from_beginning``: where to start without a committed
        offset (oldest, else only new records). ``role`` names the client id (:func:`kafka_options`);
        ``options`` go to ``AIOKafkaConsumer``.
        """
        from aiokafka import AIOKafkaConsumer

        from pipeline.kafka.clients import kafka_options

        name = topic or getattr(settings, cls.topic_setting)
        config: dict[str, Any] = {
            **kafka_options(settings, role),
            "group_id": group_id,
            "isolation_level": isolation_level,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            # Notice a topic created after we started (the worker creates them) within seconds.
            "metadata_max_age_ms": 3000,
        }
        if group_id is None:
            config["enable_auto_commit"] = False
        config.update(options)
        return cls(AIOKafkaConsumer(name, **config), name, on_invalid=on_invalid, owned=True)

    async def start(self) -> None:
        if self._owned:
            await self.consumer.start()

    async def stop(self) -> None:
        if self._owned:
            await self.consumer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def getmany(self, timeout_ms: int = 200) -> list[R]:
        """The records fetched within ``timeout_ms`` (maybe none), in each partition's order."""
        out: list[R] = []
        batches: Mapping[Any, list[Any]] = await self.consumer.getmany(timeout_ms=timeout_ms)
        for messages in batches.values():
            for message in messages:
                try:
                    out.append(self.record_type.from_json(message.value or b""))
                except ContractError as exc:
                    self.on_invalid(InvalidRecord(self.topic, message.partition, message.offset, exc))
        return out

    def __aiter__(self) -> AsyncIterator[R]:
        return self

    async def __anext__(self) -> R:
        while not self._ready:
            self._ready.extend(await self.getmany(timeout_ms=1000))
        return self._ready.popleft()


class TurnsConsumer(_RecordConsumer[TurnRecord]):
    """`stt.turns` as :class:`~pipeline.contract.TurnRecord` objects (topic: ``settings.turns_topic``)."""

    record_type = TurnRecord
    topic_setting = "turns_topic"


class TranscriptsConsumer(_RecordConsumer[TranscriptRecord]):
    """`stt.transcripts` as :class:`~pipeline.contract.TranscriptRecord` objects (``settings.transcripts_topic``)."""

    record_type = TranscriptRecord
    topic_setting = "transcripts_topic"
