"""Worker configuration: environment variables with documented defaults, mirrored by CLI flags.

Every setting has an environment variable (``env``) and a flag (``--kebab-case`` of the field name);
a flag beats the variable, the variable beats the default. The API key is never logged or printed.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from typing import Any

DEFAULT_STT_BASE_URL = "https://api.cartesia.ai"


@dataclass(frozen=True, slots=True)
class Setting:
    env: str
    default: Any
    help: str


SETTINGS: dict[str, Setting] = {
    "bootstrap_servers": Setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "Kafka bootstrap servers"),
    "stt_base_url": Setting("STT_BASE_URL", DEFAULT_STT_BASE_URL, "STT service base URL (http(s)://, ws(s)://)"),
    "api_key": Setting("CARTESIA_API_KEY", "", "STT API key (sent as a Bearer token; never logged)"),
    "audio_topic": Setting("STT_AUDIO_TOPIC", "stt.audio", "input topic"),
    "turns_topic": Setting("STT_TURNS_TOPIC", "stt.turns", "normalized turn events topic"),
    "transcripts_topic": Setting("STT_TRANSCRIPTS_TOPIC", "stt.transcripts", "final transcripts topic"),
    "sessions_topic": Setting("STT_SESSIONS_TOPIC", "stt.sessions", "compacted session checkpoints topic"),
    "dead_letter_topic": Setting("STT_DEAD_LETTER_TOPIC", "stt.dead-letter", "rejected input topic"),
    "group_id": Setting("STT_GROUP_ID", "stt-pipeline", "consumer group id"),
    "frame_ms": Setting("STT_FRAME_MS", 100.0, "audio frame size sent to STT, 50-200 ms"),
    "max_lead_ms": Setting("STT_MAX_LEAD_MS", 300.0, "how far ahead of realtime audio may be sent"),
    "silence_budget_ms": Setting("STT_SILENCE_BUDGET_MS", 400.0, "producer jitter tolerated before sending silence"),
    "drain_deadline_s": Setting("STT_DRAIN_DEADLINE_S", 30.0, "after `end`, time allowed to drain before truncating"),
    "commit_interval_ms": Setting(
        "STT_COMMIT_INTERVAL_MS", 200.0, "transaction cadence: outputs, checkpoints and offsets commit together"
    ),
    "group_instance_id": Setting("STT_GROUP_INSTANCE_ID", "", "static group membership id (stable per worker)"),
    "session_timeout_ms": Setting("STT_SESSION_TIMEOUT_MS", 10000, "consumer group session timeout"),
    "revoke_grace_s": Setting("STT_REVOKE_GRACE_S", 5.0, "on revoke/SIGTERM: time given to in-flight drains"),
    "replay_margin_ms": Setting("STT_REPLAY_MARGIN_MS", 400.0, "audio before turn.end kept for replay"),
    "max_reconnects": Setting("STT_MAX_RECONNECTS", 8, "STT reconnect attempts before a session fails"),
    "max_sessions": Setting("STT_MAX_SESSIONS", 500, "open STT sockets per worker (more: the partition waits)"),
    "pause_high_bytes": Setting("STT_PAUSE_HIGH_BYTES", 32 * 2**20, "queued audio per partition that pauses it"),
    "pause_low_bytes": Setting("STT_PAUSE_LOW_BYTES", 8 * 2**20, "queued audio per partition that resumes it"),
    "session_idle_timeout_s": Setting("STT_SESSION_IDLE_TIMEOUT_S", 120.0, "no input this long: truncate"),
    "session_max_s": Setting("STT_SESSION_MAX_S", 4 * 3600.0, "maximum session duration: truncate"),
    "lag_threshold": Setting("STT_LAG_THRESHOLD", 20, "records behind the high watermark that count as lagging"),
    "topic_partitions": Setting("STT_TOPIC_PARTITIONS", 6, "partitions of topics the worker creates"),
    "topic_replication": Setting("STT_TOPIC_REPLICATION", 1, "replication factor of topics the worker creates"),
    "retention_ms": Setting("STT_RETENTION_MS", 7 * 24 * 3600 * 1000, "retention of non-compacted topics"),
    "create_topics": Setting("STT_CREATE_TOPICS", True, "create missing topics at start"),
    "stt_version": Setting("STT_CARTESIA_VERSION", "2026-08-14", "Cartesia-Version header sent to the STT service"),
    "metrics_port": Setting("STT_METRICS_PORT", 0, "serve Prometheus metrics on 127.0.0.1:PORT (0: off)"),
}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    stt_base_url: str = DEFAULT_STT_BASE_URL
    api_key: str = ""
    audio_topic: str = "stt.audio"
    turns_topic: str = "stt.turns"
    transcripts_topic: str = "stt.transcripts"
    sessions_topic: str = "stt.sessions"
    dead_letter_topic: str = "stt.dead-letter"
    group_id: str = "stt-pipeline"
    frame_ms: float = 100.0
    max_lead_ms: float = 300.0
    silence_budget_ms: float = 400.0
    drain_deadline_s: float = 30.0
    commit_interval_ms: float = 200.0
    group_instance_id: str = ""
    session_timeout_ms: int = 10000
    revoke_grace_s: float = 5.0
    replay_margin_ms: float = 400.0
    max_reconnects: int = 8
    max_sessions: int = 500
    pause_high_bytes: int = 32 * 2**20
    pause_low_bytes: int = 8 * 2**20
    session_idle_timeout_s: float = 120.0
    session_max_s: float = 4 * 3600.0
    lag_threshold: int = 20
    topic_partitions: int = 6
    topic_replication: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    create_topics: bool = True
    stt_version: str = "2026-08-14"
    metrics_port: int = 0

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["api_key"] = "***" if self.api_key else ""
        return f"WorkerConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    __str__ = __repr__


def _convert(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return type(default)(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, setting in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        kind = type(setting.default)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=setting.help)
        else:
            shown = "(set)" if name == "api_key" else repr(setting.default)
            parser.add_argument(
                flag, type=kind, default=None, help=f"{setting.help} [env {setting.env}, default {shown}]"
            )


def from_env(args: argparse.Namespace | None = None, env: dict[str, str] | None = None) -> WorkerConfig:
    """Build the config: flag, else environment variable, else default."""
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        flag = getattr(args, name, None) if args is not None else None
        if flag is not None:
            values[name] = flag
        elif setting.env in environ:
            values[name] = _convert(environ[setting.env], setting.default)
        else:
            values[name] = setting.default
    return WorkerConfig(**values)
