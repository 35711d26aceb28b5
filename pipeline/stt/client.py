"""Opening a session's STT WebSocket: endpoint URL, query and headers, as Cartesia's SDK v4 sends them.

The client authenticates one consistent way: ``Authorization: Bearer <key>`` plus a
``Cartesia-Version`` header (PROTOCOL-FACTS §1). The key goes only into the upgrade request.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect

from pipeline.records import AudioFormat

PATHS = {"auto": "/stt/turns/websocket", "manual": "/stt/websocket"}
_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


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


def stt_headers(api_key: str, version: str) -> dict[str, str]:
    headers = {"Cartesia-Version": version, "User-Agent": "stt-pipeline/0.1"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


async def open_socket(base_url: str, fmt: AudioFormat, api_key: str, version: str) -> ClientConnection:
    """Connect (raises ``websockets.InvalidStatus`` on a refused upgrade, ``OSError`` if unreachable)."""
    return await connect(
        stt_url(base_url, fmt),
        additional_headers=stt_headers(api_key, version),
        open_timeout=10,
        ping_interval=20,
        max_size=2**22,
    )
