"""The worker's settings: one validated model, the single source of every default.

Each field is read from the environment variable named in it (``KAFKA_BOOTSTRAP_SERVERS``,
``CARTESIA_API_KEY``, ``STT_*``; no prefix renames them) and, unless it is a secret, from a flag of
`stt-pipeline worker`: ``--kebab-case`` of the field name. A flag beats the variable, the variable beats
the default (:meth:`Settings.load`). Invalid values fail at start-up with a :class:`SettingsError` naming
the variable. Secrets (``SecretStr`` fields) get no flag and never show in reprs, errors or ``--help``;
the API key can come from a mounted file instead (``CARTESIA_API_KEY_FILE``).

Kafka security (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``, ``KAFKA_SSL_*``) is one block shared by the
worker and the tools; :func:`pipeline.kafka.clients.kafka_options` turns it into client options. The SASL
password (``KAFKA_SASL_PASSWORD``, or a mounted ``KAFKA_SASL_PASSWORD_FILE``) is a secret like the API key.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le, Lt
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, InitSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from pipeline.session import DEFAULT_REPLAY_MARGIN_MS

if TYPE_CHECKING:
    from pipeline.partition import FlowLimits
    from pipeline.session import SessionConfig

_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"
_STT_SCHEMES = ("http", "https", "ws", "wss")
# The consumer's poll interval bound: the worker polls continuously, so this only catches a stuck loop.
_MAX_POLL_INTERVAL_MS = 300_000


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
LogFormat = Literal["text", "json"]
KAFKA_SECURITY_FIELDS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "sasl_password_file",
    "sasl_oauth_token_file",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
"""The Kafka security block: fields that only make sense together (validated as a whole)."""


# Of a record's size budget, what a transcript's text may not use (the rest of the record, batch overhead).
TEXT_ENVELOPE_BYTES = 16_384


class SettingsError(ValueError):
    """Invalid settings; the message names the environment variable of each bad value, never a secret."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {text}" for name, text in problems))


def _setting(default: Any, env: str, description: str, **constraints: Any) -> Any:
    return Field(default, validation_alias=env, description=description, **constraints)


def _problem(variable: str, text: str) -> PydanticCustomError:
    return PydanticCustomError("setting", "{variable}: {text}", {"variable": variable, "text": text})


class Settings(BaseSettings):
    """Every worker setting, validated; frozen (derive a changed copy with :meth:`replace`)."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        case_sensitive=True,
        validate_by_name=True,
        validate_by_alias=True,
        validate_default=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,
        env_ignore_empty=True,
        env_file=None,
    )

    bootstrap_servers: str = _setting(
        "127.0.0.1:9092", "KAFKA_BOOTSTRAP_SERVERS", "Kafka bootstrap servers", min_length=1
    )
    security_protocol: SecurityProtocol = _setting(
        "PLAINTEXT", "KAFKA_SECURITY_PROTOCOL", "Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: SaslMechanism | None = _setting(
        None,
        "KAFKA_SASL_MECHANISM",
        "SASL mechanism (SASL_* protocols): PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
    )
    sasl_username: str = _setting("", "KAFKA_SASL_USERNAME", "SASL user (PLAIN, SCRAM-*)")
    sasl_password: SecretStr = _setting(
        SecretStr(""), "KAFKA_SASL_PASSWORD", "SASL password (PLAIN, SCRAM-*); never logged, no flag"
    )
    sasl_password_file: Path | None = _setting(
        None,
        "KAFKA_SASL_PASSWORD_FILE",
        "file holding the SASL password (a mounted secret), instead of KAFKA_SASL_PASSWORD",
    )
    sasl_oauth_token_file: Path | None = _setting(
        None, "KAFKA_SASL_OAUTH_TOKEN_FILE", "file holding the OAUTHBEARER token, re-read whenever it changes"
    )
    ssl_cafile: Path | None = _setting(
        None, "KAFKA_SSL_CAFILE", "CA bundle (PEM) that signs the brokers' certificates (default: the system CAs)"
    )
    ssl_certfile: Path | None = _setting(None, "KAFKA_SSL_CERTFILE", "client certificate (PEM) for mTLS")
    ssl_keyfile: Path | None = _setting(None, "KAFKA_SSL_KEYFILE", "client private key (PEM, unencrypted) for mTLS")
    ssl_check_hostname: bool = _setting(
        True, "KAFKA_SSL_CHECK_HOSTNAME", "check that a broker's certificate names the host connected to"
    )
    stt_base_url: str = _setting(
        "https://api.cartesia.ai", "STT_BASE_URL", "STT service base URL (http(s)://, ws(s)://)"
    )
    api_key: SecretStr = _setting(
        SecretStr(""), "CARTESIA_API_KEY", "STT API key, sent as a Bearer token; never logged, no flag"
    )
    api_key_file: Path | None = _setting(
        None, "CARTESIA_API_KEY_FILE", "file holding the STT API key (a mounted secret), instead of CARTESIA_API_KEY"
    )
    audio_topic: str = _setting("stt.audio", "STT_AUDIO_TOPIC", "input topic", pattern=_TOPIC)
    turns_topic: str = _setting("stt.turns", "STT_TURNS_TOPIC", "normalized turn events topic", pattern=_TOPIC)
    transcripts_topic: str = _setting(
        "stt.transcripts", "STT_TRANSCRIPTS_TOPIC", "final transcripts topic", pattern=_TOPIC
    )
    sessions_topic: str = _setting(
        "stt.sessions", "STT_SESSIONS_TOPIC", "compacted session checkpoints topic", pattern=_TOPIC
    )
    dead_letter_topic: str = _setting(
        "stt.dead-letter", "STT_DEAD_LETTER_TOPIC", "rejected input topic", pattern=_TOPIC
    )
    group_id: str = _setting("stt-pipeline", "STT_GROUP_ID", "consumer group id", min_length=1)
    frame_ms: float = _setting(100.0, "STT_FRAME_MS", "audio frame size sent to STT, 50-200 ms", ge=50, le=200)
    max_lead_ms: float = _setting(300.0, "STT_MAX_LEAD_MS", "how far ahead of realtime audio may be sent", gt=0)
    silence_budget_ms: float = _setting(
        400.0, "STT_SILENCE_BUDGET_MS", "producer jitter tolerated before sending silence", ge=0
    )
    drain_deadline_s: float = _setting(
        30.0, "STT_DRAIN_DEADLINE_S", "after `end`, time allowed to drain before truncating", gt=0
    )
    commit_interval_ms: float = _setting(
        200.0, "STT_COMMIT_INTERVAL_MS", "transaction cadence: outputs, checkpoints and offsets commit together", gt=0
    )
    eager_sends: bool = _setting(
        True,
        "STT_EAGER_SENDS",
        "send each output at once inside the partition's open transaction (live read_uncommitted views); "
        "the commit tick then adds checkpoints and offsets",
    )
    uvloop: bool = _setting(True, "STT_UVLOOP", "run the worker on uvloop when it is installed")
    group_instance_id: str = _setting("", "STT_GROUP_INSTANCE_ID", "static group membership id (stable per worker)")
    session_timeout_ms: int = _setting(10000, "STT_SESSION_TIMEOUT_MS", "consumer group session timeout", ge=1000)
    revoke_grace_s: float = _setting(
        5.0, "STT_REVOKE_GRACE_S", "on revoke/SIGTERM: time given to in-flight drains", ge=0
    )
    replay_margin_ms: float = _setting(
        DEFAULT_REPLAY_MARGIN_MS,
        "STT_REPLAY_MARGIN_MS",
        "audio before turn.end kept for replay (above the provider's ~1 s buffer)",
        ge=0,
    )
    max_reconnects: int = _setting(8, "STT_MAX_RECONNECTS", "STT reconnect attempts before a session fails", ge=0)
    max_sessions: int = _setting(
        500, "STT_MAX_SESSIONS", "open STT sockets per worker (more: only the new session waits; open ones flow)", ge=1
    )
    pause_high_bytes: int = _setting(
        32 * 2**20, "STT_PAUSE_HIGH_BYTES", "queued audio per partition that pauses it", ge=1
    )
    pause_low_bytes: int = _setting(
        8 * 2**20, "STT_PAUSE_LOW_BYTES", "queued audio per partition that resumes it", ge=0
    )
    session_idle_timeout_s: float = _setting(120.0, "STT_SESSION_IDLE_TIMEOUT_S", "no input this long: truncate", gt=0)
    session_max_s: float = _setting(4 * 3600.0, "STT_SESSION_MAX_S", "maximum session duration: truncate", gt=0)
    lag_threshold: int = _setting(
        20, "STT_LAG_THRESHOLD", "records behind the high watermark that count as lagging", ge=0
    )
    topic_partitions: int = _setting(6, "STT_TOPIC_PARTITIONS", "partitions of topics the worker creates", ge=1)
    topic_replication: int = _setting(
        1, "STT_TOPIC_REPLICATION", "replication factor of topics the worker creates", ge=1, le=32767
    )
    retention_ms: int = _setting(
        7 * 24 * 3600 * 1000, "STT_RETENTION_MS", "retention of non-compacted topics (-1: forever)", ge=-1
    )
    create_topics: bool = _setting(True, "STT_CREATE_TOPICS", "create missing topics at start")
    stt_version: str = _setting(
        "2026-08-14", "STT_CARTESIA_VERSION", "Cartesia-Version header sent to the STT service", min_length=1
    )
    http_host: str = _setting(
        "0.0.0.0", "STT_HTTP_HOST", "address of the worker's HTTP server (/metrics /healthz /readyz /status)",
        min_length=1,
    )
    http_port: int = _setting(
        9400, "STT_HTTP_PORT", "port of the worker's HTTP server (0: no server)", ge=0, le=65535
    )
    health_deadline_s: float = _setting(
        2.0, "STT_HEALTH_DEADLINE_S", "/healthz fails when the event loop does not answer within this", gt=0
    )
    ready_stt_window_s: float = _setting(
        60.0,
        "STT_READY_STT_WINDOW_S",
        "/readyz fails when STT connections fail and none succeeded within this window",
        gt=0,
    )
    log_level: str = _setting("INFO", "STT_LOG_LEVEL", "logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    log_format: LogFormat = _setting("text", "STT_LOG_FORMAT", "log lines: text, or json (one object a line)")
    recovery_grace_s: float = _setting(
        5.0,
        "STT_RECOVERY_GRACE_S",
        "after Kafka was unreachable: how long a partition with no new record stays not live (no silence fill)",
        ge=0,
    )
    fetch_max_wait_ms: int = _setting(
        100, "STT_FETCH_MAX_WAIT_MS", "longest a fetch waits for data (an idle partition's response cadence)", ge=1
    )
    fetch_min_bytes: int = _setting(
        1,
        "STT_FETCH_MIN_BYTES",
        "a fetch waits for this much data (or STT_FETCH_MAX_WAIT_MS): fewer, larger fetches under load",
        ge=1,
    )
    fetch_silence_ms: int = _setting(
        250, "STT_FETCH_SILENCE_MS", "no fetch response this long: the partition counts as not live", ge=1
    )
    write_stall_ms: int = _setting(
        150,
        "STT_WRITE_STALL_MS",
        "the worker's own transaction hanging this long means Kafka refuses writes: partitions not live",
        ge=1,
    )
    completed_memory: int = _setting(
        100_000,
        "STT_COMPLETED_MEMORY",
        "ended sessions remembered (their late records: duplicates dropped, others dead-lettered)",
        ge=1,
    )
    max_key_bytes: int = _setting(256, "STT_MAX_KEY_BYTES", "longest accepted record key (session id)", ge=1)
    max_header_bytes: int = _setting(1024, "STT_MAX_HEADER_BYTES", "longest accepted record header value", ge=1)
    producer_linger_ms: int = _setting(
        10,
        "STT_PRODUCER_LINGER_MS",
        "transactional producer linger: how long an eager send waits to share a produce request",
        ge=0,
    )
    producer_retry_backoff_ms: int = _setting(
        20,
        "STT_PRODUCER_RETRY_BACKOFF_MS",
        "transactional producer: wait before retrying a request Kafka answered with a retriable error",
        ge=1,
    )
    producer_request_timeout_ms: int = _setting(
        15000, "STT_PRODUCER_REQUEST_TIMEOUT_MS", "transactional producer request timeout", ge=1
    )
    max_request_size: int = _setting(
        1048576, "STT_MAX_REQUEST_SIZE", "largest produce request (bounds one output record)", ge=1
    )
    stt_open_timeout_s: float = _setting(10.0, "STT_OPEN_TIMEOUT_S", "STT WebSocket handshake timeout", gt=0)
    stt_ping_interval_s: float = _setting(20.0, "STT_PING_INTERVAL_S", "STT WebSocket keepalive ping interval", gt=0)
    stt_max_message_bytes: int = _setting(
        2**22, "STT_MAX_MESSAGE_BYTES", "largest STT WebSocket message accepted", ge=1
    )
    # `stt-pipeline analytics` (the Faust app over the output topics); it shares the Kafka settings above.
    analytics_host: str = _setting("127.0.0.1", "STT_ANALYTICS_HOST", "analytics: web server address", min_length=1)
    analytics_port: int = _setting(6066, "STT_ANALYTICS_PORT", "analytics: web server port", ge=1, le=65535)
    analytics_db: Path = _setting(
        Path(".cache/analytics.duckdb"), "STT_ANALYTICS_DB", "analytics: DuckDB file of the sessions and turns tables"
    )
    analytics_id: str = _setting(
        "stt-analytics",
        "STT_ANALYTICS_ID",
        "analytics: Faust app id and consumer group (never the worker's STT_GROUP_ID)",
        pattern=_TOPIC,
    )
    analytics_keep_s: float = _setting(
        600.0, "STT_ANALYTICS_KEEP_S", "analytics: how long an ended session stays in the live table", gt=0
    )

    _file_key: SecretStr | None = PrivateAttr(None)
    _file_password: SecretStr | None = PrivateAttr(None)

    def __init__(self, **values: Any) -> None:
        """Field names (or variable names) as keywords; unset fields come from ``os.environ``, then defaults."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _settings_error(exc) from None

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        for entry in value.split(","):
            host, colon, port = entry.strip().rpartition(":")
            if not colon:
                host, port = port, ""
            port_ok = not port or (port.isdigit() and 0 < int(port) < 65536)
            if not host or any(c.isspace() for c in host) or not port_ok:
                raise _problem("KAFKA_BOOTSTRAP_SERVERS", f"must be host:port[,host:port...], got {value!r}")
        return value

    @field_validator("stt_base_url")
    @classmethod
    def _stt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _STT_SCHEMES or not parts.netloc:
            # The URL itself is not echoed: it could carry credentials.
            raise _problem("STT_BASE_URL", "must be an http://, https://, ws:// or wss:// URL with a host")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        return _log_level_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.pause_low_bytes >= self.pause_high_bytes:
            raise _problem(
                "STT_PAUSE_LOW_BYTES",
                f"must be less than STT_PAUSE_HIGH_BYTES ({self.pause_high_bytes}), got {self.pause_low_bytes}",
            )
        if self.fetch_silence_ms <= self.fetch_max_wait_ms:
            raise _problem(
                "STT_FETCH_SILENCE_MS",
                f"must be greater than STT_FETCH_MAX_WAIT_MS ({self.fetch_max_wait_ms}), got {self.fetch_silence_ms}",
            )
        if self.analytics_id == self.group_id:
            raise _problem("STT_ANALYTICS_ID", f"must differ from STT_GROUP_ID, both are {self.group_id!r}")
        seen: dict[str, str] = {}
        for name in ("audio_topic", "turns_topic", "transcripts_topic", "sessions_topic", "dead_letter_topic"):
            topic = getattr(self, name)
            if topic in seen:
                raise _problem(env_name(name), f"must differ from {env_name(seen[topic])}, both are {topic!r}")
            seen[topic] = name
        if self.api_key_file is not None:
            if self.api_key.get_secret_value():
                raise _problem("CARTESIA_API_KEY, CARTESIA_API_KEY_FILE", "both are set; set only one of them")
            self._file_key = SecretStr(_read_key_file(self.api_key_file))
        self._check_kafka_security()
        return self

    def _check_kafka_security(self) -> None:
        protocol, mechanism = self.security_protocol, self.sasl_mechanism
        sasl, tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
        if sasl and mechanism is None:
            raise _problem("KAFKA_SASL_MECHANISM", f"must be set with KAFKA_SECURITY_PROTOCOL={protocol}")
        if not sasl:
            for field in ("sasl_mechanism", "sasl_username", "sasl_password_file", "sasl_oauth_token_file"):
                if getattr(self, field):
                    raise _problem(env_name(field), f"is set but KAFKA_SECURITY_PROTOCOL={protocol} uses no SASL")
            if self.sasl_password.get_secret_value():
                raise _problem("KAFKA_SASL_PASSWORD", f"is set but KAFKA_SECURITY_PROTOCOL={protocol} uses no SASL")
        if not tls:
            for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, field) is not None:
                    raise _problem(env_name(field), f"is set but KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise _problem("KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE", "mTLS needs both; set both or neither")
        for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_oauth_token_file"):
            path = getattr(self, field)
            if path is not None and not os.access(path, os.R_OK):
                raise _problem(env_name(field), f"cannot read {str(path)!r}")
        if tls:
            _check_pem(self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if mechanism == "OAUTHBEARER":
            if self.sasl_oauth_token_file is None:
                raise _problem("KAFKA_SASL_OAUTH_TOKEN_FILE", "must be set with KAFKA_SASL_MECHANISM=OAUTHBEARER")
            for field in ("sasl_username", "sasl_password_file"):
                if getattr(self, field):
                    raise _problem(env_name(field), "is not used with KAFKA_SASL_MECHANISM=OAUTHBEARER")
            return
        if mechanism is None:
            return
        if self.sasl_oauth_token_file is not None:
            raise _problem("KAFKA_SASL_OAUTH_TOKEN_FILE", f"is only used with OAUTHBEARER, not {mechanism}")
        if not self.sasl_username:
            raise _problem("KAFKA_SASL_USERNAME", f"must be set with KAFKA_SASL_MECHANISM={mechanism}")
        if self.sasl_password_file is not None:
            if self.sasl_password.get_secret_value():
                raise _problem("KAFKA_SASL_PASSWORD, KAFKA_SASL_PASSWORD_FILE", "both are set; set only one of them")
            self._file_password = SecretStr(_read_secret_file("KAFKA_SASL_PASSWORD_FILE", self.sasl_password_file))
        elif not self.sasl_password.get_secret_value():
            raise _problem(
                "KAFKA_SASL_PASSWORD", f"KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE must be set with {mechanism}"
            )

    def kafka_password(self) -> str:
        """The effective SASL password: the password file's content, else ``KAFKA_SASL_PASSWORD``."""
        password = self._file_password if self._file_password is not None else self.sasl_password
        return password.get_secret_value()

    def stt_api_key(self) -> str:
        """The effective STT API key: the key file's content, else ``CARTESIA_API_KEY`` (may be empty)."""
        key = self._file_key if self._file_key is not None else self.api_key
        return key.get_secret_value()

    @classmethod
    def load(cls, args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Flag (a non-None attribute of ``args`` named like a field), else variable of ``env`` (default
        ``os.environ``), else default. Raises :class:`SettingsError`."""
        flags: dict[str, Any] = {}
        if args is not None:
            for name in (*_flag_fields(), *_GLOBAL_FIELDS):
                value = getattr(args, name, None)
                if value is not None:
                    flags[name] = value
        environ = os.environ if env is None else env
        return cls._build(flags, _MappingEnvSource(cls, environ))

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (by field name), validated again. Raises :class:`SettingsError`."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(changes)
        return type(self)._build(values)

    @classmethod
    def _build(cls, values: dict[str, Any], *more: EnvSettingsSource) -> Settings:
        """``values`` by field name, then the ``more`` sources (never ``os.environ`` unless given), then defaults."""
        return cls(_build_sources=((InitSettingsSource(cls, init_kwargs=values), *more), values))

    def session_config(self) -> SessionConfig:
        from pipeline.session import SessionConfig

        return SessionConfig(
            frame_ms=self.frame_ms,
            max_lead_ms=self.max_lead_ms,
            silence_budget_ms=self.silence_budget_ms,
            drain_deadline_s=self.drain_deadline_s,
            replay_margin_ms=self.replay_margin_ms,
            max_reconnects=self.max_reconnects,
            max_text_bytes=self.max_request_size - TEXT_ENVELOPE_BYTES,
        )

    def flow_limits(self) -> FlowLimits:
        from pipeline.partition import FlowLimits

        return FlowLimits(
            fetch_silence_ms=self.fetch_silence_ms,
            recovery_grace_s=self.recovery_grace_s,
            lag_threshold=self.lag_threshold,
            pause_high_bytes=self.pause_high_bytes,
            pause_low_bytes=self.pause_low_bytes,
        )

    @property
    def heartbeat_interval_ms(self) -> int:
        """Consumer heartbeats: a fifth of the session timeout, at least every 500 ms."""
        return max(500, self.session_timeout_ms // 5)

    @property
    def rebalance_timeout_ms(self) -> int:
        """Long enough for the revoke grace plus a last commit."""
        return int((self.revoke_grace_s + 30) * 1000)

    @property
    def max_poll_interval_ms(self) -> int:
        return _MAX_POLL_INTERVAL_MS

    @property
    def client_id_prefix(self) -> str:
        """The start of every Kafka client id: the process's role and instance, e.g. ``stt-pipeline-w1``."""
        return f"stt-pipeline-{self.group_instance_id or socket.gethostname()}"


class _MappingEnvSource(EnvSettingsSource):
    """Pydantic-settings' environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._mapping, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _log_level_name(value: str) -> str:
    name = value.strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise _problem("STT_LOG_LEVEL", f"must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {value!r}")
    return name


def _check_pem(cafile: Path | None, certfile: Path | None, keyfile: Path | None) -> None:
    """Load the TLS files once, so that a wrong one fails at start naming its variable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is not None:
        try:
            context.load_verify_locations(cafile)
        except ssl.SSLError as exc:
            raise _problem("KAFKA_SSL_CAFILE", f"{str(cafile)!r} holds no PEM certificate ({exc.reason})") from None
    if certfile is not None and keyfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile)
        except ssl.SSLError as exc:
            raise _problem(
                "KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE", f"not a matching PEM certificate and key ({exc.reason})"
            ) from None


def _read_key_file(path: Path) -> str:
    return _read_secret_file("CARTESIA_API_KEY_FILE", path)


def _read_secret_file(variable: str, path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise _problem(variable, f"cannot read {str(path)!r}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise _problem(variable, f"{str(path)!r} is not UTF-8 text") from None
    if not key:
        raise _problem(variable, f"{str(path)!r} is empty")
    return key


# --- names, defaults, flags --------------------------------------------------------------------------


def env_name(field: str) -> str:
    """The environment variable of a field."""
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, str)
    return alias


def default(field: str) -> Any:
    """A field's default: where code outside the model needs one, it takes it from here."""
    return Settings.model_fields[field].default


def is_secret(field: str) -> bool:
    return Settings.model_fields[field].annotation is SecretStr


_GLOBAL_FIELDS = ("log_level", "log_format")
"""Settings of every command, so flags of `stt-pipeline` itself (``--log-level``, ``--log-format``)."""


def _flag_fields() -> Iterator[str]:
    """Fields with a flag on `stt-pipeline worker`: all but secrets and the top-level ``--log-*`` flags."""
    for name in Settings.model_fields:
        if not is_secret(name) and name not in _GLOBAL_FIELDS:
            yield name


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def shown_default(field: str) -> str:
    value = default(field)
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(field: str) -> str:
    info: FieldInfo = Settings.model_fields[field]
    text = f"{info.description} [env {env_name(field)}, default {shown_default(field)}]"
    return text.replace("%", "%%")


def _flag_type(annotation: Any) -> Callable[[str], Any]:
    if annotation is int or annotation is float:
        return annotation
    if annotation == Path | None or annotation is Path:
        return Path
    return str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's flags, generated from the fields. Secrets have none: a hidden ``--api-key`` is only
    caught so that :func:`warn_ignored_flags` can say why it is ignored."""
    for name in _flag_fields():
        annotation = Settings.model_fields[name].annotation
        if annotation is bool:
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text(name))
            continue
        parser.add_argument(
            flag(name), type=_flag_type(annotation), default=None, metavar=name.upper(), help=help_text(name)
        )
    parser.add_argument("--api-key", dest="ignored_api_key", default=None, help=argparse.SUPPRESS)


def warn_ignored_flags(args: argparse.Namespace, stream: TextIO | None = None) -> None:
    """An API key given as a flag is ignored, with a warning (it would show in `ps`)."""
    if getattr(args, "ignored_api_key", None) is not None:
        print(
            "warning: --api-key is ignored: a key on the command line shows in `ps`; "
            "use CARTESIA_API_KEY or CARTESIA_API_KEY_FILE",
            file=stream or sys.stderr,
        )


def log_level(flag_value: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The logging level for any command: ``--log-level``, else ``STT_LOG_LEVEL``, else the default."""
    environ = os.environ if env is None else env
    value = flag_value or environ.get(env_name("log_level")) or default("log_level")
    try:
        return _log_level_name(value)
    except PydanticCustomError as exc:
        raise SettingsError([(env_name("log_level"), str(exc.context["text"]) if exc.context else "invalid")]) from None


def log_format(flag_value: str | None = None, env: Mapping[str, str] | None = None) -> LogFormat:
    """The log line format for any command: ``--log-format``, else ``STT_LOG_FORMAT``, else the default."""
    environ = os.environ if env is None else env
    value = (flag_value or environ.get(env_name("log_format")) or default("log_format")).strip().lower()
    if value == "json":
        return "json"
    if value == "text":
        return "text"
    raise SettingsError([(env_name("log_format"), f"must be text or json, got {value!r}")])


# --- errors ------------------------------------------------------------------------------------------

_BOUNDS = {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}
_KINDS = {
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "must be 1-249 characters of A-Z a-z 0-9 . _ -",
    "path_type": "must be a file path",
}


def _field_of(loc: str) -> str | None:
    for name, info in Settings.model_fields.items():
        if loc in (name, info.validation_alias):
            return name
    return None


def _bounds(field: str) -> str:
    meta = Settings.model_fields[field].metadata
    ge = [m.ge for m in meta if isinstance(m, Ge)]
    gt = [m.gt for m in meta if isinstance(m, Gt)]
    le = [m.le for m in meta if isinstance(m, Le)]
    lt = [m.lt for m in meta if isinstance(m, Lt)]
    if ge and le:
        return f"must be between {ge[0]:g} and {le[0]:g}"
    parts = [f"at least {v:g}" for v in ge] + [f"greater than {v:g}" for v in gt]
    parts += [f"at most {v:g}" for v in le] + [f"less than {v:g}" for v in lt]
    return "must be " + " and ".join(parts)


def _settings_error(exc: ValidationError) -> SettingsError:
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        ctx = error.get("ctx") or {}
        if error["type"] == "setting":
            problems.append((str(ctx["variable"]), str(ctx["text"])))
            continue
        loc = str(error["loc"][0]) if error["loc"] else ""
        field = _field_of(loc)
        if field is None:
            problems.append((loc, "unknown setting"))
            continue
        if error["type"] in _BOUNDS:
            text = _bounds(field)
        else:
            text = _KINDS.get(error["type"], error["msg"][:1].lower() + error["msg"][1:])
        if not is_secret(field) and "input" in error:
            text += f", got {_shown(error['input'])}"
        problems.append((env_name(field), text))
    return SettingsError(problems)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and value and not value.isspace():
        return value
    return repr(value)
