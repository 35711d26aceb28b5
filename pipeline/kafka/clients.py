"""Options for every Kafka client of the project, from :class:`~pipeline.settings.Settings`.

:func:`kafka_options` is the one place that turns the settings' connection block (bootstrap servers and
security: TLS, SASL PLAIN/SCRAM/OAUTHBEARER) into keyword arguments for ``AIOKafkaConsumer``,
``AIOKafkaProducer`` and ``AIOKafkaAdminClient``; each client also gets a ``client_id`` naming its role
and instance. :func:`diagnose` says why a client could not connect (authentication, TLS, unreachable),
with the user and the bootstrap servers but never the secret; :func:`denied` names a missing ACL.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from pipeline.errors import KafkaSetupError
from pipeline.settings import Settings


class KafkaAuthError(KafkaSetupError):
    """The brokers refused this client's credentials (or its TLS setup)."""


class FileTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka ships no type hints
    """OAUTHBEARER token from a file (e.g. one a sidecar refreshes); re-read whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    async def token(self) -> str:
        stat = await asyncio.to_thread(os.stat, self.path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
            self._token, self._stamp = text.strip(), stamp
        return self._token

    def __repr__(self) -> str:
        return f"FileTokenProvider({str(self.path)!r})"


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of the SSL / SASL_SSL protocols: CA bundle, optional client certificate (mTLS)."""
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.ssl_cafile,
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
    )
    context.check_hostname = settings.ssl_check_hostname
    return context


def connection(kafka: Settings | str) -> Settings:
    """Settings to connect with: ``kafka`` itself, or for a bare bootstrap string, plaintext defaults."""
    if isinstance(kafka, Settings):
        return kafka
    return Settings.load(env={"KAFKA_BOOTSTRAP_SERVERS": kafka})


def kafka_options(settings: Settings, role: str) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: bootstrap, ``client_id`` (role and instance), security."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": f"{settings.client_id_prefix}-{role}",
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol.endswith("SSL"):
        options["ssl_context"] = ssl_context(settings)
    if settings.sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.sasl_mechanism
        if settings.sasl_mechanism == "OAUTHBEARER":
            assert settings.sasl_oauth_token_file is not None  # validated by Settings
            options["sasl_oauth_token_provider"] = FileTokenProvider(settings.sasl_oauth_token_file)
        else:
            options["sasl_plain_username"] = settings.sasl_username
            options["sasl_plain_password"] = settings.kafka_password()
    return options


def _principal(settings: Settings) -> str:
    if settings.sasl_mechanism == "OAUTHBEARER":
        return f"the OAUTHBEARER token of {settings.sasl_oauth_token_file}"
    if settings.sasl_mechanism is not None:
        return f"{settings.sasl_username!r} ({settings.sasl_mechanism})"
    if settings.ssl_certfile is not None:
        return f"the client certificate {settings.ssl_certfile}"
    return "an anonymous client"


async def diagnose(settings: Settings, timeout_s: float = 15.0) -> KafkaSetupError:
    """Why no client can connect: one direct connection per bootstrap server, its failure made readable.

    Returns (never raises) a :class:`KafkaAuthError` for refused credentials or a failed TLS handshake,
    else a :class:`KafkaSetupError` saying the servers cannot be reached.
    """
    options = kafka_options(settings, "probe")
    bootstrap = options.pop("bootstrap_servers")
    reasons: list[str] = []
    for entry in bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(host, int(port or 9092), **options)
        except (SaslAuthenticationFailed, AuthenticationFailedError, UnsupportedSaslMechanismError) as exc:
            return KafkaAuthError(
                f"Kafka authentication failed for {_principal(settings)} at {bootstrap}: {_reason(exc)}"
            )
        except ssl.SSLError as exc:
            return KafkaAuthError(f"Kafka TLS handshake failed at {bootstrap}: {exc.reason or exc}")
        except (OSError, KafkaError, TimeoutError) as exc:
            reasons.append(f"{entry.strip()}: {_reason(exc)}")
            continue
        conn.close()
    detail = "; ".join(reasons) if reasons else "the servers answer but the client could not start"
    return KafkaSetupError(f"cannot reach Kafka at {bootstrap} ({settings.security_protocol}): {detail}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def denied(exc: BaseException, settings: Settings) -> str | None:
    """The message for an ACL denial (which operation on which topic, group or transactional id), else None."""
    from pipeline.kafka.transactions import transactional_id

    who = _principal(settings)
    args = ", ".join(str(a) for a in exc.args if not isinstance(a, BaseException)) or "?"
    if isinstance(exc, TopicAuthorizationFailedError):
        return f"Kafka denied {who} access to topic {args} (Describe/Read/Write: see the ACL list)"
    if isinstance(exc, GroupAuthorizationFailedError):
        return f"Kafka denied {who} Read on group {settings.group_id!r}"
    if isinstance(exc, TransactionalIdAuthorizationFailed):
        prefix = transactional_id(settings.group_id, settings.audio_topic, 0).rpartition(".")[0] + "."
        return f"Kafka denied {who} Write on transactional ids with prefix {prefix!r}"
    if isinstance(exc, ClusterAuthorizationFailedError):
        return f"Kafka denied {who} a cluster operation (IdempotentWrite, or CreateTopics with STT_CREATE_TOPICS)"
    return None


def worker_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The worker's consumer of the audio topic: manual commits through transactions, read_committed."""
    return AIOKafkaConsumer(
        **kafka_options(settings, "consumer"),
        group_id=settings.group_id,
        group_instance_id=settings.group_instance_id or None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=settings.session_timeout_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        fetch_min_bytes=settings.fetch_min_bytes,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        rebalance_timeout_ms=settings.rebalance_timeout_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
    )
