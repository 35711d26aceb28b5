"""Batch transcription (`POST /stt`) for the emulator: request parsing and the response, without I/O.

What the official SDK sends (``client.stt.transcribe``): multipart/form-data with ``file``, ``model``,
``language`` and ``timestamp_granularities[]`` (``word``); ``encoding`` and ``sample_rate`` as query
parameters, needed only for raw PCM. The answer is ``{"type":"transcript","text","request_id",
"language","duration","words"?}`` where ``words`` (only when word granularity is asked) is a list of
``{"word","start","end"}`` in seconds.

Files: WAV (PCM 8/16/32-bit integer, any channel count, mixed down) or, with ``encoding`` and
``sample_rate``, raw audio in one of the six protocol encodings. Other containers get 400.

Word times come from :class:`pipeline.emulator.words.WordTimer` (the engine's voice activity: exact
for the tones engine, shared in proportion to length within a whisper segment).
"""

from __future__ import annotations

import io
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, TypeGuard

import numpy as np
from numpy.typing import NDArray

from pipeline.audio import ENCODINGS, Encoding, bytes_per_sample, decode
from pipeline.emulator.engines.base import Engine, EngineEvent, Text
from pipeline.emulator.params import BATCH_MODELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, ParamError, parse_language
from pipeline.emulator.words import WordTimer

BATCH_PATH = "/stt"


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """A validated `POST /stt`."""

    samples: NDArray[np.float32]
    sample_rate: int
    model: str
    language: str
    word_timestamps: bool


def parse_multipart(content_type: str, body: bytes) -> dict[str, list[tuple[bytes, str | None]]]:
    """Form fields by name: each value as (bytes, filename or None)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ParamError("Invalid request", "The body must be multipart/form-data.", "invalid_request")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    fields: dict[str, list[tuple[bytes, str | None]]] = {}
    if not message.is_multipart():
        raise ParamError("Invalid request", "Unreadable multipart body.", "invalid_request")
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        fields.setdefault(name, []).append((data, part.get_filename()))
    return fields


def _wav(data: bytes) -> tuple[NDArray[np.float32], int]:
    try:
        with wave.open(io.BytesIO(data)) as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ParamError("Invalid audio", f"Unreadable WAV file: {exc}.", "invalid_audio") from None
    if width == 1:
        x = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        x = np.frombuffer(frames, dtype=dtype).astype(np.float32) / float(np.iinfo(dtype).max)
    else:
        raise ParamError("Invalid audio", f"Unsupported WAV sample width {width}.", "invalid_audio")
    if channels > 1:
        x = x[: len(x) - len(x) % channels].reshape(-1, channels).mean(axis=1)
    return x.astype(np.float32), rate


def is_encoding(name: str) -> TypeGuard[Encoding]:
    return name in ENCODINGS


def parse_batch(query: Mapping[str, Sequence[str]], content_type: str, body: bytes) -> BatchRequest:
    """Validate a `POST /stt` (query values as lists, as from `urllib.parse.parse_qs`)."""
    fields = parse_multipart(content_type, body)

    def field(name: str) -> str | None:
        values = fields.get(name)
        return values[-1][0].decode() if values else None

    model = field("model")
    if model not in BATCH_MODELS:
        raise ParamError(
            "Invalid model",
            f"The model is not valid for batch transcription, make sure it is one of {', '.join(BATCH_MODELS)}.",
            "model_not_found",
        )
    language = parse_language(field("language"))
    granularities = {v.decode() for v, _ in fields.get("timestamp_granularities[]", [])}
    granularities |= {v.decode() for v, _ in fields.get("timestamp_granularities", [])}
    files = fields.get("file")
    if not files:
        raise ParamError("Missing file", "The `file` field is required.", "invalid_request")
    data = files[-1][0]
    encoding = query["encoding"][-1] if query.get("encoding") else None
    raw_rate = query["sample_rate"][-1] if query.get("sample_rate") else None
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        samples, rate = _wav(data)
    elif encoding is not None and raw_rate is not None:
        if not is_encoding(encoding):
            raise ParamError(
                "Invalid encoding", f"`encoding` must be one of {', '.join(ENCODINGS)}.", "invalid_encoding"
            )
        if not raw_rate.isdigit():
            raise ParamError("Invalid sample rate", "`sample_rate` must be an integer in Hz.", "invalid_sample_rate")
        rate = int(raw_rate)
        width = bytes_per_sample(encoding)
        samples = decode(data[: len(data) - len(data) % width], encoding)
    else:
        raise ParamError(
            "Invalid audio",
            "Unsupported file format: send WAV, or raw audio with `encoding` and `sample_rate`.",
            "invalid_audio",
        )
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ParamError(
            "Invalid sample rate",
            f"Sample rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, got {rate}.",
            "invalid_sample_rate",
        )
    return BatchRequest(samples, rate, model, language, "word" in granularities)


def _words(events: Sequence[EngineEvent]) -> tuple[str, list[dict[str, Any]]]:
    timer = WordTimer()
    timer.feed(events)
    if events:
        timer.cut(events[-1].at_ms)
    text = "".join(event.text for event in events if isinstance(event, Text))
    words = [
        {"word": w.word, "start": round(w.start_ms / 1000.0, 3), "end": round(w.end_ms / 1000.0, 3)}
        for w in timer.take()
    ]
    return text, words


def transcribe(engine: Engine, request: BatchRequest, request_id: str) -> dict[str, Any]:
    """The `POST /stt` response body for ``request``."""
    recognizer = engine.recognizer(request.sample_rate)
    events = [*recognizer.feed(request.samples), *recognizer.flush()]
    text, words = _words(events)
    response: dict[str, Any] = {
        "type": "transcript",
        "request_id": request_id,
        "text": text,
        "language": request.language,
        "duration": round(len(request.samples) / request.sample_rate, 3),
    }
    if request.word_timestamps:
        response["words"] = words
    return response
