"""Connection parameters of the emulator's WebSocket endpoints: parsing and validation.

Mirrors what Cartesia documents for `/stt/turns/websocket` (auto) and `/stt/websocket` (manual).
Invalid input raises :class:`ParamError`, which carries the Cartesia-shaped error fields the server
sends before closing the socket.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pipeline.audio import ENCODINGS, Encoding

Endpoint = Literal["auto", "manual"]

AUTO_PATH = "/stt/turns/websocket"
MANUAL_PATH = "/stt/websocket"
PATHS: dict[str, Endpoint] = {AUTO_PATH: "auto", MANUAL_PATH: "manual"}

# The model ids the official SDK (4.2) lists per endpoint, dated snapshots included.
MODELS: dict[Endpoint, tuple[str, ...]] = {
    "auto": ("ink-2",),
    "manual": ("ink-2", "ink-whisper", "ink-whisper-2025-06-04"),
}
BATCH_MODELS: tuple[str, ...] = ("ink-whisper", "ink-whisper-2025-06-04")
# `min_volume` and `max_silence_duration_secs` are "used by `ink-whisper` models only" (SDK docstrings).
SILENCE_SETTING_MODELS: tuple[str, ...] = ("ink-whisper", "ink-whisper-2025-06-04")
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MAX_KEYTERMS = 100
MAX_KEYTERM_CHARS = 1200
DOC_URL = "https://docs.cartesia.ai/api-reference/stt"


class ParamError(ValueError):
    """A connection or command parameter was rejected; fields follow Cartesia's `error` event."""

    def __init__(self, title: str, message: str, error_code: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.title = title
        self.message = message
        self.error_code = error_code
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """Turn-detection settings of the auto endpoint (query params or a `config` command)."""

    start_threshold: float = 0.8
    eager_end_threshold: float = 0.4
    end_threshold: float = 0.2
    end_timeout_ms: int = 5600

    def validated(self) -> TurnSettings:
        _in_range("turn_start_threshold", self.start_threshold, 0.5, 0.9)
        _in_range("turn_eager_end_threshold", self.eager_end_threshold, 0.3, 0.6)
        _in_range("turn_end_threshold", self.end_threshold, 0.05, 0.5)
        _in_range("turn_end_timeout_ms", self.end_timeout_ms, 640, 11200)
        if not self.start_threshold > self.eager_end_threshold > self.end_threshold:
            raise ParamError(
                "Invalid turn thresholds",
                "Thresholds must be strictly ordered: start > eager_end > end.",
                "invalid_turn_config",
            )
        return self


@dataclass(frozen=True, slots=True)
class ConnectionParams:
    """Everything a client declared when it opened a socket."""

    endpoint: Endpoint
    model: str
    encoding: Encoding
    sample_rate: int
    version: str
    language: str = "en"
    keyterms: tuple[str, ...] = ()
    turn: TurnSettings = field(default_factory=TurnSettings)
    min_volume: float | None = None
    max_silence_duration_secs: float | None = None


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ParamError(
            "Invalid parameter", f"`{name}` must be between {low} and {high}, got {value}.", "invalid_parameter"
        )


def _number(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ParamError("Invalid parameter", f"`{name}` must be a number, got {raw!r}.", "invalid_parameter") from None


def parse_params(
    endpoint: Endpoint, query: Mapping[str, Sequence[str]], headers: Mapping[str, str]
) -> ConnectionParams:
    """Validate a connection's query string (values as lists, as from `urllib.parse.parse_qs`).

    ``headers`` must be keyed in lower case. The API version may come from the `Cartesia-Version`
    header or the `cartesia_version` query param; any non-empty string is accepted.
    """

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    version = headers.get("cartesia-version") or one("cartesia_version")
    if not version:
        raise ParamError(
            "Missing API version",
            "Send the `Cartesia-Version` header or the `cartesia_version` query parameter.",
            "missing_version",
        )
    model = one("model")
    if model is None:
        raise ParamError("Missing model", "The `model` query parameter is required.", "model_not_found")
    if model not in MODELS[endpoint]:
        raise ParamError(
            "Invalid model",
            f"The model is not valid for this endpoint, make sure it is one of {', '.join(MODELS[endpoint])}.",
            "model_not_found",
        )
    encoding = one("encoding")
    if encoding is None or encoding not in ENCODINGS:
        raise ParamError(
            "Invalid encoding",
            f"`encoding` must be one of {', '.join(ENCODINGS)}, got {encoding!r}.",
            "invalid_encoding",
        )
    raw_rate = one("sample_rate")
    if raw_rate is None or not raw_rate.isdigit():
        raise ParamError(
            "Invalid sample rate", f"`sample_rate` must be an integer in Hz, got {raw_rate!r}.", "invalid_sample_rate"
        )
    sample_rate = int(raw_rate)
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ParamError(
            "Invalid sample rate",
            f"`sample_rate` must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, got {sample_rate}.",
            "invalid_sample_rate",
        )
    keyterms = tuple(query.get("keyterm", ()))
    if len(keyterms) > MAX_KEYTERMS or sum(len(k) for k in keyterms) > MAX_KEYTERM_CHARS:
        raise ParamError(
            "Too many keyterms",
            f"At most {MAX_KEYTERMS} keyterms and {MAX_KEYTERM_CHARS} characters in total.",
            "invalid_keyterms",
        )
    # The auto endpoint has no `language` (ink-2 is English only): like every unknown query
    # parameter, it is ignored there.
    language = "en" if endpoint == "auto" else parse_language(one("language"))
    turn = TurnSettings()
    min_volume = max_silence = None
    if endpoint == "auto":
        turn = TurnSettings(
            start_threshold=_number("turn_start_threshold", one("turn_start_threshold") or "0.8"),
            eager_end_threshold=_number("turn_eager_end_threshold", one("turn_eager_end_threshold") or "0.4"),
            end_threshold=_number("turn_end_threshold", one("turn_end_threshold") or "0.2"),
            end_timeout_ms=int(_number("turn_end_timeout_ms", one("turn_end_timeout_ms") or "5600")),
        ).validated()
    elif model in SILENCE_SETTING_MODELS:
        if (raw := one("min_volume")) is not None:
            min_volume = _number("min_volume", raw)
            _in_range("min_volume", min_volume, 0.0, 1.0)
        if (raw := one("max_silence_duration_secs")) is not None:
            max_silence = _number("max_silence_duration_secs", raw)
    return ConnectionParams(
        endpoint=endpoint,
        model=model,
        encoding=encoding,
        sample_rate=sample_rate,
        version=version,
        language=language,
        keyterms=keyterms,
        turn=turn,
        min_volume=min_volume,
        max_silence_duration_secs=max_silence,
    )


def parse_language(raw: str | None) -> str:
    """An ISO 639-1 code (default ``en``; no detection)."""
    language = raw or "en"
    if not re.fullmatch(r"[a-z]{2}", language):
        raise ParamError(
            "Invalid language", f"`language` must be an ISO 639-1 code, got {language!r}.", "invalid_language"
        )
    return language


def turn_settings_update(current: TurnSettings, turn: Mapping[str, object]) -> TurnSettings:
    """Apply a `config` command's `turn` object (all four fields optional) and validate the result."""
    values: dict[str, float] = {
        "start_threshold": current.start_threshold,
        "eager_end_threshold": current.eager_end_threshold,
        "end_threshold": current.end_threshold,
        "end_timeout_ms": current.end_timeout_ms,
    }
    for key, value in turn.items():
        if key not in values:
            raise ParamError("Invalid config", f"Unknown turn setting `{key}`.", "invalid_turn_config")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError("Invalid config", f"Turn setting `{key}` must be a number.", "invalid_turn_config")
        values[key] = float(value)
    return TurnSettings(
        start_threshold=values["start_threshold"],
        eager_end_threshold=values["eager_end_threshold"],
        end_threshold=values["end_threshold"],
        end_timeout_ms=int(values["end_timeout_ms"]),
    ).validated()
