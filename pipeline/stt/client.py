"""Opening a session's STT WebSocket: endpoint URL, query and headers, as Cartesia's SDK v4 sends them.

The client authenticates one consistent way: ``Authorization: Bearer <key>`` plus a
``Cartesia-Version`` header (PROTOCOL-FACTS §1). The key goes only into the upgrade request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

from pipeline import DISTRIBUTION, __version__
from pipeline.records import AudioFormat
from pipeline.settings import Settings, default

PATHS = {"auto": "/stt/turns/websocket", "manual": "/stt/websocket"}
_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
USER_AGENT = f"{DISTRIBUTION}/{__version__}"
"""The ``User-Agent`` of the upgrade request: the installed distribution's version (package metadata)."""


def stt_url(base_url: str, fmt: AudioFormat) -> str:
    """The WebSocket URL for a session: base URL with http→ws / https→wss, endpoint path, query."""
    parts = urlsplit(base_url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"STT base URL must be http(s):// or ws(s)://, got {base_url!r}")
    query: dict[str, str | int] = {"model": fmt.model, "encoding": fmt.encoding, "sample_rate": fmt.sample_rate}
    if fmt.endpoint == "manual" and fmt.language:
        query["language"] = fmt.language
    path = parts.path.rstrip("/") + PATHS[fmt.endpoint]
    return urlunsplit((_SCHEMES[parts.scheme], parts.netloc, path, urlencode(query), ""))


def stt_headers(api_key: str | SecretStr, version: str) -> dict[str, str]:
    """The upgrade request's headers: ``Cartesia-Version``, ``User-Agent``, and the key as a Bearer token."""
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    headers = {"Cartesia-Version": version, "User-Agent": USER_AGENT}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def open_socket(
    base_url: str,
    fmt: AudioFormat,
    api_key: str | SecretStr,
    version: str,
    *,
    open_timeout_s: float = default("stt_open_timeout_s"),
    ping_interval_s: float = default("stt_ping_interval_s"),
    max_message_bytes: int = default("stt_max_message_bytes"),
) -> ClientConnection:
    """Connect (raises ``websockets.InvalidStatus`` on a refused upgrade, ``OSError`` if unreachable).

    The keyword arguments are the ``stt_open_timeout_s``, ``stt_ping_interval_s`` and
    ``stt_max_message_bytes`` settings; their defaults are those of :class:`~pipeline.settings.Settings`.
    """
    return await connect(
        stt_url(base_url, fmt),
        additional_headers=stt_headers(api_key, version),
        open_timeout=open_timeout_s,
        ping_interval=ping_interval_s,
        max_size=max_message_bytes,
        compression=None,  # PCM hardly compresses; permessage-deflate cost 12 % of the worker's CPU
        logger=_WIRE_LOG,
    )


def send_now(ws: ClientConnection, data: bytes) -> bool:
    """Write one binary frame at once, through the sans-I/O protocol straight to the transport, when the
    socket is open, not mid-way through a fragmented message and not paused by flow control (then
    there is nothing to wait for). False: nothing was written; ``await ws.send(data)`` instead."""
    if ws.protocol.state is not State.OPEN or ws.send_in_progress is not None or ws.paused:
        return False
    ws.protocol.send_binary(data)
    try:
        ws.send_data()
    except Exception as exc:  # the transport broke: as websockets itself does, fail the connection
        ws.set_connection_exc(exc)
        ws.transport.abort()
    return True


def connector(settings: Settings) -> Callable[[AudioFormat], Awaitable[ClientConnection]]:
    """``connect(fmt)`` for the worker's sessions, from the settings (the key read once, at start)."""
    key = settings.stt_api_key()

    def connect(fmt: AudioFormat) -> Awaitable[ClientConnection]:
        return open_socket(
            settings.stt_base_url,
            fmt,
            key,
            settings.stt_version,
            open_timeout_s=settings.stt_open_timeout_s,
            ping_interval_s=settings.stt_ping_interval_s,
            max_message_bytes=settings.stt_max_message_bytes,
        )

    return connect


class _NoCredentials(logging.Filter):
    """websockets logs every handshake header at DEBUG; the credential headers' values never get out."""

    _SECRET_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization", "cookie", "set-cookie"})

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in self._SECRET_HEADERS:
            record.args = (args[0], "[redacted]")
        return True


_WIRE_LOG = logging.getLogger("pipeline.stt.wire")
_WIRE_LOG.addFilter(_NoCredentials())
