"""The emulator's network edge: a `websockets` server that speaks Cartesia's realtime STT protocol.

Routing, authentication, the concurrency limit, the idle timeout, the realtime budget, fault
injection and per-session metrics live here; everything the protocol *says* is decided by the pure
core in :mod:`pipeline.emulator.protocol`.

Choices where Cartesia's docs are silent (tested in ``tests/integration/test_emulator_*.py``):

- 401 (missing/wrong key) and 429 ``concurrency_limited`` refuse the HTTP upgrade itself, with a
  Cartesia-shaped JSON error body. Invalid parameters (400) are accepted at the HTTP level, then get an
  ``error`` event and close code 1008, as the docs' examples show an error *event* for a bad model.
- Audio more than ``overload_budget_ms`` (default 2000) ahead of the wall clock since the first audio:
  ``error`` 500 ``audio_overrun``, then close 1011.
- No frame at all for ``idle_timeout_s`` (default 20): ``error`` 408 ``idle_timeout``, then close 1008.
- Clean ends close with 1000.
- Server variants (:data:`pipeline.emulator.protocol.VARIANTS`, ``EmulatorConfig.variants``,
  ``--variant``): the plausible alternatives where the docs are silent. ``in_stream_429`` accepts the
  upgrade over the limit, then sends ``error`` 429 ``concurrency_limited`` and closes 1008.

- A 4xx ``error`` event answering a bad command on an open socket (``invalid_message``, a bad
  ``config``) does not close it: the command is ignored and the session goes on. Fatal errors
  (idle timeout, overrun, injected faults) send the ``error`` event and close at once, while still
  reading (and discarding) what the client sends, so the closing handshake never stalls; the stats'
  ``close_code`` is the code sent to the client.
- Error events carry ``doc_url``.

Batch transcription: ``POST /stt`` (see :mod:`pipeline.emulator.batch`) on the same port, with the
same authentication and error bodies. `websockets` only parses GET requests, so the connection class
takes a POST's head and body off the wire itself and hands the handshake machinery an equivalent
GET; :meth:`Emulator._process_request` then answers it with the transcript.

HTTP extras: ``GET /_emulator/health`` and ``GET /_emulator/stats`` (per-session metrics as JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pipeline.audio import duration_ms
from pipeline.emulator.batch import BATCH_PATH, parse_batch, transcribe
from pipeline.emulator.engines.base import Engine
from pipeline.emulator.faults import ConnectionFaults, FaultPlan
from pipeline.emulator.params import PATHS, ConnectionParams, Endpoint, ParamError, parse_params
from pipeline.emulator.protocol import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    DEFAULT_SERVER_BUFFER_MS,
    DEFAULT_TAU_MS,
    AutoSession,
    Close,
    ManualSession,
    Outgoing,
    RateGuard,
    Session,
    Variant,
    error_event,
    error_from,
)

log = logging.getLogger("pipeline.emulator")


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    api_keys: tuple[str, ...] = ()
    max_sessions: int | None = None
    idle_timeout_s: float = 20.0
    overload_budget_ms: float = 2000.0
    tau_ms: float = DEFAULT_TAU_MS
    server_buffer_ms: float = DEFAULT_SERVER_BUFFER_MS
    variants: frozenset[Variant] = frozenset()


@dataclass(slots=True)
class SessionStats:
    """What the emulator saw of one connection."""

    request_id: str
    endpoint: Endpoint
    encoding: str
    sample_rate: int
    opened_at: float
    closed_at: float | None = None
    audio_ms: float = 0.0
    max_lead_ms: float = 0.0
    realtime_ratio: float = 0.0
    engine_cpu_s: float = 0.0
    events_sent: int = 0
    overloaded: bool = False
    errors: list[str] = field(default_factory=list)
    close_code: int | None = None
    fault: str | None = None


MAX_BATCH_BYTES = 2**27


class _HttpConnection(ServerConnection):
    """A server connection that also takes plain HTTP POSTs (batch transcription).

    A POST's head and body are read here; the handshake machinery is then fed the same head as a
    GET without a body, and :attr:`post_body` holds what was posted.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.post_body: bytes | None = None
        self.over_limit = False  # accepted only to be refused with an `error` event (variant in_stream_429)
        self._pending: bytearray | None = None

    def data_received(self, data: bytes) -> None:
        if self._pending is None and self.request is None and data.startswith(b"POST "):
            self._pending = bytearray()
        if self._pending is None:
            super().data_received(data)
            return
        self._pending += data
        head_end = self._pending.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self._pending[:head_end]).decode("latin-1").split("\r\n")
        length = 0
        kept = []
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip() or 0)
            elif name.strip().lower() not in ("transfer-encoding", "expect"):
                kept.append(line)
        length = min(length, MAX_BATCH_BYTES)
        if len(self._pending) < head_end + 4 + length:
            return
        self.post_body = bytes(self._pending[head_end + 4 : head_end + 4 + length])
        self._pending = None
        _, path, protocol = head[0].split(" ", 2)
        super().data_received(("\r\n".join([f"GET {path} {protocol}", *kept]) + "\r\n\r\n").encode("latin-1"))


def _json_response(status: HTTPStatus, body: dict[str, Any]) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)


class Emulator:
    """A running (or startable) emulator; use as ``async with Emulator(engine, config) as emu:``."""

    def __init__(self, engine: Engine, config: EmulatorConfig | None = None) -> None:
        self.engine = engine
        self.config = config or EmulatorConfig()
        self.faults = FaultPlan()
        self.sessions: list[SessionStats] = []
        self._reserved = 0
        self.concurrency_refusals = 0
        self._server: Server | None = None
        self._ordinal = itertools.count(1)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        """What a client (or the Cartesia SDK's ``base_url``) should use."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def active(self) -> int:
        return self._reserved

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            create_connection=_HttpConnection,
            max_size=2**22,
            ping_interval=None,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def stats(self) -> dict[str, Any]:
        return {
            "engine": self.engine.name,
            "active": self._reserved,
            "overloads": sum(s.overloaded for s in self.sessions),
            "concurrency_refusals": self.concurrency_refusals,
            "sessions": [asdict(s) for s in self.sessions],
        }

    # -- HTTP -------------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        post_body = connection.post_body if isinstance(connection, _HttpConnection) else None
        if post_body is not None:
            return await self._batch(request, url.path, parse_qs(url.query), post_body)
        if url.path == "/_emulator/health":
            return _json_response(HTTPStatus.OK, {"status": "ok", "engine": self.engine.name})
        if url.path == "/_emulator/stats":
            return _json_response(HTTPStatus.OK, self.stats())
        if url.path not in PATHS:
            return _json_response(
                HTTPStatus.NOT_FOUND,
                error_event(404, "Not found", f"No endpoint at {url.path}.", "not_found", None),
            )
        refusal = self._authenticate(request, parse_qs(url.query))
        if refusal is not None:
            return refusal
        if self.config.max_sessions is not None and self._reserved >= self.config.max_sessions:
            self.concurrency_refusals += 1
            if "in_stream_429" in self.config.variants and isinstance(connection, _HttpConnection):
                connection.over_limit = True
                return None
            return _json_response(
                HTTPStatus.TOO_MANY_REQUESTS,
                error_event(
                    429,
                    "Concurrency limit reached",
                    f"At most {self.config.max_sessions} concurrent STT streams are allowed.",
                    "concurrency_limited",
                    None,
                ),
            )
        self._reserved += 1
        asyncio.get_running_loop().create_task(self._release_when_closed(connection))
        return None

    async def _batch(self, request: Request, path: str, query: dict[str, list[str]], body: bytes) -> Response:
        if path != BATCH_PATH:
            return _json_response(
                HTTPStatus.NOT_FOUND, error_event(404, "Not found", f"No endpoint at POST {path}.", "not_found", None)
            )
        refusal = self._authenticate(request, query)
        if refusal is not None:
            return refusal
        request_id = str(uuid.uuid4())
        try:
            batch = parse_batch(query, request.headers.get("Content-Type", ""), body)
        except ParamError as exc:
            return _json_response(HTTPStatus(exc.status_code), error_from(exc, request_id))
        heavy = bool(getattr(self.engine, "cpu_heavy", False))
        if heavy:
            result = await asyncio.to_thread(transcribe, self.engine, batch, request_id)
        else:
            result = transcribe(self.engine, batch, request_id)
        return _json_response(HTTPStatus.OK, result)

    async def _release_when_closed(self, connection: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            await connection.wait_closed()
        self._reserved -= 1

    def _authenticate(self, request: Request, query: dict[str, list[str]]) -> Response | None:
        if not self.config.api_keys:
            return None
        key = request.headers.get("X-API-Key")
        auth = request.headers.get("Authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if key is None and query.get("access_token"):
            key = query["access_token"][-1]
        if key in self.config.api_keys:
            return None
        message = "Missing API key." if key is None else "Invalid API key."
        return _json_response(HTTPStatus.UNAUTHORIZED, error_event(401, "Unauthorized", message, "unauthorized", None))

    # -- WebSocket --------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        url = urlsplit(request.path)
        endpoint = PATHS[url.path]
        request_id = str(uuid.uuid4())
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        try:
            params = parse_params(endpoint, parse_qs(url.query), headers)
        except ParamError as exc:
            await ws.send(orjson.dumps(error_from(exc, request_id)).decode())
            await ws.close(CLOSE_POLICY, exc.error_code)
            return
        if isinstance(ws, _HttpConnection) and ws.over_limit:
            limit = self.config.max_sessions
            event = error_event(
                429,
                "Concurrency limit reached",
                f"At most {limit} concurrent STT streams are allowed.",
                "concurrency_limited",
                request_id,
            )
            await ws.send(orjson.dumps(event).decode())
            await ws.close(CLOSE_POLICY, "concurrency_limited")
            return
        faults = self.faults.assign(endpoint)
        stats = SessionStats(request_id, endpoint, params.encoding, params.sample_rate, time.time())
        self.sessions.append(stats)
        await _Connection(self, ws, params, request_id, faults, stats).run()


class _Connection:
    """One accepted socket: reads frames, drives the protocol core, sends what it says."""

    def __init__(
        self,
        emulator: Emulator,
        ws: ServerConnection,
        params: ConnectionParams,
        request_id: str,
        faults: ConnectionFaults,
        stats: SessionStats,
    ) -> None:
        self.ws = ws
        self.params = params
        self.faults = faults
        self.stats = stats
        self.config = emulator.config
        recognizer = emulator.engine.recognizer(params.sample_rate)
        self.core: Session = (
            AutoSession(
                params,
                recognizer,
                request_id,
                tau_ms=emulator.config.tau_ms,
                buffer_ms=emulator.config.server_buffer_ms,
                variants=emulator.config.variants,
            )
            if params.endpoint == "auto"
            else ManualSession(
                params,
                recognizer,
                request_id,
                buffer_ms=emulator.config.server_buffer_ms,
                variants=emulator.config.variants,
            )
        )
        self.heavy = bool(getattr(emulator.engine, "cpu_heavy", False))
        self.guard = RateGuard(emulator.config.overload_budget_ms)
        self.outbox: asyncio.Queue[tuple[float, Outgoing]] = asyncio.Queue()

    def _emit(self, items: list[Outgoing]) -> None:
        due = time.monotonic() + self.faults.delay_ms / 1000.0
        for item in items:
            self.outbox.put_nowait((due, item))

    def _fail(self, status: int, title: str, message: str, code: str) -> None:
        self.stats.errors.append(code)
        close = CLOSE_INTERNAL if status >= 500 else CLOSE_POLICY
        self._emit([error_event(status, title, message, code, self.core.request_id), Close(close, code)])
        self.core.closed = True

    async def _recognize(self, data: bytes) -> list[Outgoing]:
        def run() -> tuple[list[Outgoing], float]:
            started = time.thread_time()
            out = self.core.audio(data)
            return out, time.thread_time() - started

        out, cpu = await asyncio.to_thread(run) if self.heavy else run()
        self.stats.engine_cpu_s += cpu
        return out

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        self._emit(self.core.opening())
        try:
            await self._read_loop()
        except ConnectionClosed:
            pass
        finally:
            # Keep reading (and discarding) while the last events and the close frame go out: a
            # server that stops reading stalls the closing handshake until its timeout.
            discard = asyncio.create_task(self._discard_reads())
            if not sender.done():
                if not self.core.closed or self.stats.fault == "drop":
                    sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await sender
            discard.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await discard
            self.stats.closed_at = time.time()
            if self.stats.close_code is None:
                self.stats.close_code = self.ws.close_code

    async def _read_loop(self) -> None:
        while not self.core.closed:
            try:
                async with asyncio.timeout(self.config.idle_timeout_s):
                    message = await self.ws.recv()
            except TimeoutError:
                self._fail(
                    408,
                    "Idle timeout",
                    f"No audio or command received for {self.config.idle_timeout_s:g} s.",
                    "idle_timeout",
                )
                return
            if isinstance(message, str):
                self._emit(self.core.text(message))
                continue
            chunk_ms = duration_ms(len(message), self.params.encoding, self.params.sample_rate)
            now = time.monotonic()
            over = self.guard.add(chunk_ms, now)
            self._emit(await self._recognize(message))
            self.stats.audio_ms = self.core.audio_ms
            self.stats.max_lead_ms = self.guard.max_lead_ms
            self.stats.realtime_ratio = self.guard.realtime_ratio(now)
            if over:
                self.stats.overloaded = True
                self._fail(
                    500,
                    "Internal server error",
                    f"Audio arrived {self.guard.max_lead_ms:.0f} ms ahead of realtime (budget "
                    f"{self.config.overload_budget_ms:.0f} ms). Stream 50-200 ms chunks paced at realtime.",
                    "audio_overrun",
                )
                return
            fault = self.faults.due(self.core.audio_ms)
            if fault == "drop":
                self.stats.fault = "drop"
                self.stats.close_code = 1006
                self.core.closed = True
                self.ws.transport.abort()
                return
            if fault == "error":
                self.stats.fault = "error"
                self._fail(
                    self.faults.error_status,
                    "Injected fault",
                    f"Fault injected at {self.core.audio_ms:.0f} ms of audio.",
                    "injected_fault",
                )
                return

    async def _discard_reads(self) -> None:
        while True:
            await self.ws.recv()

    async def _send_loop(self) -> None:
        while True:
            due, item = await self.outbox.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if isinstance(item, Close):
                if self.stats.close_code is None:
                    self.stats.close_code = item.code
                await self.ws.close(item.code, item.reason)
                return
            await self.ws.send(orjson.dumps(item).decode())
            self.stats.events_sent += 1
