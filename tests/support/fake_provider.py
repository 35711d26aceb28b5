"""A scriptable, hostile fake of Cartesia's realtime STT WebSocket, for tests of the worker's defences.

The fake works at the raw-socket level: asyncio streams carry bytes, and websockets' sans-I/O
``ServerProtocol`` only parses and serializes frames. Nothing is sent that the behaviour did not
choose, so a behaviour can refuse the upgrade, leave a close frame unanswered, or keep talking after
the client's ``{"type":"close"}``. It serves on 127.0.0.1 from its own event loop in a daemon thread
(like :class:`tests.support.emulator.EmulatorThread`), so sync and async tests can use it, and it
records what every connection sent. ``stop()`` aborts every socket and returns within 5 s.

A behaviour is chosen per provider, or per connection by a callable of the connection index (0, 1, …)::

    with running_fake_provider(sequence(close_1000_no_events(), polite())) as fake:
        ...  # connection 0 is closed at its first audio, connections 1, 2, … are served politely
        assert fake.connections()[0].header("Authorization") == "Bearer key"

Behaviours speak the auto endpoint's events (``/stt/turns/websocket``) whatever path was requested.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, SEND_EOF
from websockets.server import ServerProtocol

from pipeline.audio import AudioFormatError, bytes_per_sample, parse_encoding

STOP_TIMEOUT_S: Final = 5.0
_CLOSE_HANDSHAKE_S: Final = 2.0
_REQUEST_TIMEOUT_S: Final = 10.0
_READ_CHUNK: Final = 65536
_DEFAULT_BYTES_PER_S: Final = 32000  # pcm_s16le at 16 kHz, when the query does not say
HUGE_DEFAULT: Final = 2 * 1024 * 1024

# websockets' protocol logs request headers (the API key) at DEBUG: keep its logger above that.
_WS_LOGGER = logging.getLogger("tests.fake_provider.websockets")
_WS_LOGGER.setLevel(logging.WARNING)

Message = str | bytes


@dataclass(slots=True)
class ConnectionRecord:
    """What the fake saw of one TCP connection (a snapshot when read through :meth:`FakeProvider.connections`)."""

    index: int
    behaviour: str = ""
    request_id: str = ""
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)
    rejected_status: int | None = None
    audio_bytes: int = 0
    audio_frames: int = 0
    text_commands: list[str] = field(default_factory=list)
    events_sent: list[str] = field(default_factory=list)
    close_sent: int | None = None
    close_received: int | None = None
    opened_at: float = 0.0
    closed_at: float | None = None
    error: str | None = None

    def header(self, name: str) -> str | None:
        """The first value of request header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def text_count(self) -> int:
        return len(self.text_commands)

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


class FakeConnection:
    """One accepted WebSocket, driven by a behaviour: read messages, send events/frames, close."""

    def __init__(self, record: ConnectionRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.record = record
        self._reader = reader
        self._writer = writer
        self._protocol = ServerProtocol(max_size=None, logger=_WS_LOGGER)
        self._messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self._silent = False
        self._pump: asyncio.Task[None] | None = None
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None

    # -- handshake (used by FakeProvider) ----------------------------------------------------------

    async def read_request(self) -> Request | None:
        async with asyncio.timeout(_REQUEST_TIMEOUT_S):
            while True:
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    return None
                self._protocol.receive_data(data)
                for event in self._protocol.events_received():
                    if isinstance(event, Request):
                        return event
                if self._protocol.handshake_exc is not None:
                    return None

    async def reject(self, response: Response) -> None:
        """Send a refusing HTTP response, then give the client (bounded) time to read it and hang up."""
        self._protocol.send_response(response)
        self._write_pending()
        await self._writer.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_HANDSHAKE_S):
                while await self._reader.read(_READ_CHUNK):
                    pass

    def accept(self, request: Request, *, silent: bool) -> bool:
        """Complete the upgrade; ``silent``: never write another byte (not even a close reply or pong)."""
        response = self._protocol.accept(request)
        self._protocol.send_response(response)
        self._write_pending()
        if response.status_code != 101:
            self.record.rejected_status = response.status_code
            return False
        self._silent = silent
        self._pump = asyncio.create_task(self._read_frames())
        return True

    # -- what behaviours use -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._protocol.state is OPEN

    async def messages(self) -> AsyncIterator[Message]:
        """Text (str) and binary (bytes) messages from the client, until its close frame or EOF."""
        while (message := await self._messages.get()) is not None:
            yield message

    async def wait_for_audio(self, n_bytes: int = 1) -> bool:
        """Read until ``n_bytes`` of audio in all arrived; False if the client went away first."""
        async for _ in self.messages():
            if self.record.audio_bytes >= n_bytes:
                return True
        return False

    async def send_event(self, event: Any) -> None:
        """Send ``event`` as a JSON text frame (any JSON value, not only objects)."""
        kind = event.get("type") if isinstance(event, dict) else None
        await self.send_text(orjson.dumps(event).decode(), label=kind if isinstance(kind, str) else None)

    async def send_text(self, text: str, label: str | None = None) -> None:
        """Send a raw text frame; recorded in ``events_sent`` as ``label`` or ``<text>``."""
        await self._send(lambda: self._protocol.send_text(text.encode()), label or "<text>")

    async def send_binary(self, data: bytes) -> None:
        await self._send(lambda: self._protocol.send_binary(data), "<binary>")

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame, then wait (bounded) for the client's reply and TCP close."""
        if not self.is_open:
            return
        self._protocol.send_close(code, reason)
        self.record.close_sent = code
        self._write_pending()
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()
        await self.wait_closed_bounded()

    async def wait_closed(self) -> None:
        """Wait until the client's side of the TCP connection is closed."""
        if self._pump is not None:
            await asyncio.shield(self._pump)

    async def wait_closed_bounded(self) -> None:
        """:meth:`wait_closed`, giving up after the closing-handshake allowance (2 s)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_HANDSHAKE_S):
                await self.wait_closed()

    # -- internals ---------------------------------------------------------------------------------

    async def _send(self, send: Callable[[], None], label: str) -> None:
        if not self.is_open:
            return
        try:
            send()
        except InvalidState:
            return
        self.record.events_sent.append(label)
        self._write_pending()
        await self._writer.drain()

    def _write_pending(self) -> None:
        for data in self._protocol.data_to_send():
            if self._silent or self._writer.is_closing():
                continue
            if data == SEND_EOF:
                if self._writer.can_write_eof():
                    self._writer.write_eof()
            else:
                self._writer.write(data)

    async def _read_frames(self) -> None:
        try:
            while data := await self._reader.read(_READ_CHUNK):
                self._protocol.receive_data(data)
                self._take_frames()
            self._protocol.receive_eof()
            self._take_frames()
        except ConnectionError:
            pass
        finally:
            self._messages.put_nowait(None)

    def _take_frames(self) -> None:
        for event in self._protocol.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
        self._write_pending()

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.record.close_received = Close.parse(frame.data).code
            return
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self._fragment_opcode = frame.opcode
            self._fragments = []
        elif frame.opcode is not Opcode.CONT:
            return  # ping / pong
        self._fragments.append(bytes(frame.data))
        if not frame.fin:
            return
        data = b"".join(self._fragments)
        self._fragments = []
        if self._fragment_opcode is Opcode.BINARY:
            self.record.audio_bytes += len(data)
            self.record.audio_frames += 1
            self._messages.put_nowait(data)
        else:
            text = data.decode("utf-8", "replace")
            self.record.text_commands.append(text)
            self._messages.put_nowait(text)

    def abort(self) -> None:
        self._writer.transport.abort()


def _is_close_command(message: Message) -> bool:
    if not isinstance(message, str):
        return False
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("type") == "close"


def _bytes_per_second(query: dict[str, list[str]]) -> int:
    try:
        encoding = parse_encoding(query.get("encoding", [""])[0])
        return bytes_per_sample(encoding) * int(query.get("sample_rate", [""])[0])
    except (AudioFormatError, ValueError):
        return _DEFAULT_BYTES_PER_S


# -- behaviours ------------------------------------------------------------------------------------


class Behaviour:
    """How the fake treats one connection. Subclass and override ``refuse`` and/or ``run``."""

    name: str = "behaviour"
    silent: bool = False  # True: after the 101, never write a byte (close frames and pings go unanswered)

    def refuse(self, request: Request) -> Response | None:
        """An HTTP response refusing the upgrade, or None to accept it."""
        return None

    async def run(self, conn: FakeConnection) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class _Polite(Behaviour):
    """A minimal auto endpoint: one turn of ``text`` per ``turn_audio_ms`` of audio, drains on close."""

    name: str = "polite"
    text: str = "hello"
    turn_audio_ms: float = 1000.0
    connected: bool = True
    turn_start: bool = True
    inject: tuple[Message, ...] = ()  # sent once, right after the first turn's opening events
    late_turns: int = 0  # turns sent after the client's close command, before closing
    late_interval_s: float = 0.05

    async def run(self, conn: FakeConnection) -> None:
        rid = conn.record.request_id
        per_turn = max(1, round(_bytes_per_second(conn.record.query) * self.turn_audio_ms / 1000))
        if self.connected:
            await conn.send_event({"type": "connected", "request_id": rid})
        in_turn, pending, injected = False, 0, False
        async for message in conn.messages():
            if isinstance(message, bytes):
                pending += len(message)
                while pending > 0:
                    if not in_turn:
                        await self._open_turn(conn, self.text)
                        in_turn = True
                    if not injected:
                        await self._inject(conn)
                        injected = True
                    if pending < per_turn:
                        break
                    pending -= per_turn
                    await conn.send_event({"type": "turn.end", "transcript": self.text, "request_id": rid})
                    in_turn = False
            elif _is_close_command(message):
                if in_turn:
                    await conn.send_event({"type": "turn.end", "transcript": self.text, "request_id": rid})
                for _ in range(self.late_turns):
                    await asyncio.sleep(self.late_interval_s)
                    await self._open_turn(conn, "late")
                    await conn.send_event({"type": "turn.end", "transcript": "late", "request_id": rid})
                await conn.close(1000)
                return

    async def _open_turn(self, conn: FakeConnection, text: str) -> None:
        if self.turn_start:
            rid = conn.record.request_id
            await conn.send_event({"type": "turn.start", "request_id": rid})
            await conn.send_event({"type": "turn.update", "transcript": text, "request_id": rid})

    async def _inject(self, conn: FakeConnection) -> None:
        for item in self.inject:
            if isinstance(item, bytes):
                await conn.send_binary(item)
            else:
                await conn.send_text(item, label=f"<{self.name}>")


@dataclass(frozen=True)
class _NeverAnswer(Behaviour):
    name: str = "never_answer"
    silent: bool = True

    async def run(self, conn: FakeConnection) -> None:
        async for _ in conn.messages():
            pass
        await conn.wait_closed()


@dataclass(frozen=True)
class _CloseAtFirstAudio(Behaviour):
    name: str = "close_1000_no_events"
    error: dict[str, Any] | None = None
    close_code: int = 1000

    async def run(self, conn: FakeConnection) -> None:
        if not await conn.wait_for_audio():
            return
        if self.error is not None:
            await conn.send_event({**self.error, "request_id": conn.record.request_id})
        await conn.close(self.close_code)


@dataclass(frozen=True)
class _RejectUpgrade(Behaviour):
    name: str = "reject_upgrade"
    status: int = 401
    body: str = ""
    echo_auth: bool = False
    content_type: str = "text/plain; charset=utf-8"

    def refuse(self, request: Request) -> Response | None:
        body = self.body
        if self.echo_auth:
            body += f"\nyou sent Authorization: {request.headers.get('Authorization', '')}"
        data = body.encode()
        headers = Headers(
            [("Content-Type", self.content_type), ("Content-Length", str(len(data))), ("Connection", "close")]
        )
        return Response(self.status, "Refused", headers, data)

    async def run(self, conn: FakeConnection) -> None:  # pragma: no cover - never accepted
        return


def polite(text: str = "hello", turn_audio_ms: float = 1000.0) -> Behaviour:
    """Well-behaved: `connected`, then per ``turn_audio_ms`` of audio turn.start+update at its first byte and turn.end ``text`` when complete; on `close` the open turn's turn.end, then close 1000."""  # noqa: E501
    return _Polite(text=text, turn_audio_ms=turn_audio_ms)


def invalid_json(text: str = "this is {not json") -> Behaviour:
    """Polite, plus one text frame that is not JSON right after the first turn's turn.start/update."""
    return _Polite(name="invalid_json", inject=(text,))


def json_array() -> Behaviour:
    """Polite, plus one text frame holding a JSON array of events (not an object) after the first turn.update."""
    return _Polite(name="json_array", inject=('[{"type":"turn.end","transcript":"array"}]',))


def binary(data: bytes = b"\x00\xffnot-an-event\x01" * 64) -> Behaviour:
    """Polite, plus one binary frame from the server after the first turn.update."""
    return _Polite(name="binary", inject=(data,))


def huge_message(size: int = HUGE_DEFAULT) -> Behaviour:
    """Polite, plus one turn.update whose transcript is ``size`` characters (default 2 MiB) after the first turn.update."""  # noqa: E501
    event = orjson.dumps({"type": "turn.update", "transcript": "hello " + "a" * max(0, size - 6)}).decode()
    return _Polite(name="huge_message", inject=(event,))


UNKNOWN_EVENTS: Final[tuple[str, ...]] = (
    '{"type":"turn.mystery","transcript":"mystery"}',
    '{"type":"TURN.END","transcript":"shouting"}',
    '{"type":"speech_started"}',
    '{"type":7}',
    '{"type":null}',
    '{"transcript":"no type at all"}',
)


def unknown_types() -> Behaviour:
    """Polite, plus events with unknown, miscased, non-string, null and missing `type` after the first turn.update."""
    return _Polite(name="unknown_types", inject=UNKNOWN_EVENTS)


def events_after_close(turns: int = 3, interval_s: float = 0.05) -> Behaviour:
    """Polite, but after the client's close command (and the open turn's end) sends ``turns`` more turns ("late"), then closes 1000."""  # noqa: E501
    return _Polite(name="events_after_close", late_turns=turns, late_interval_s=interval_s)


def turn_end_without_start(text: str = "hello") -> Behaviour:
    """Polite, but every turn is a bare turn.end ``text`` (never a turn.start or turn.update)."""
    return _Polite(name="turn_end_without_start", text=text, turn_start=False)


def never_answer() -> Behaviour:
    """Completes the upgrade, then reads and discards everything and never writes a byte: close frames go unanswered and the TCP connection stays open."""  # noqa: E501
    return _NeverAnswer()


def close_1000_no_events() -> Behaviour:
    """Sends nothing, and closes 1000 at the first audio frame."""
    return _CloseAtFirstAudio()


def error_event(
    status_code: float = 500, error_code: str | None = "internal_error", close_code: int = 1011
) -> Behaviour:
    """At the first audio frame, an `error` event with ``status_code`` (int or float, as given) and ``error_code``, then close ``close_code`` (1011)."""  # noqa: E501
    error: dict[str, Any] = {"type": "error", "title": "Fake error", "message": "The fake provider failed on purpose."}
    error["status_code"] = status_code
    if error_code is not None:
        error["error_code"] = error_code
    return _CloseAtFirstAudio(name="error_event", error=error, close_code=close_code)


def reject_upgrade(status: int = 401, body: str = "unauthorized", echo_auth: bool = False) -> Behaviour:
    """Refuses the HTTP upgrade with ``status`` and ``body``; ``echo_auth`` appends the request's Authorization header to the body (a proxy leaking the key)."""  # noqa: E501
    return _RejectUpgrade(status=status, body=body, echo_auth=echo_auth)


BEHAVIOURS: Final[dict[str, Callable[[], Behaviour]]] = {
    "polite": polite,
    "invalid_json": invalid_json,
    "json_array": json_array,
    "binary": binary,
    "huge_message": huge_message,
    "unknown_types": unknown_types,
    "events_after_close": events_after_close,
    "turn_end_without_start": turn_end_without_start,
    "never_answer": never_answer,
    "close_1000_no_events": close_1000_no_events,
    "error_event": error_event,
    "reject_upgrade": reject_upgrade,
}

BehaviourSpec = Behaviour | str | Callable[[int], "Behaviour | str"]


def sequence(*behaviours: Behaviour | str) -> Callable[[int], Behaviour | str]:
    """Connection ``i`` gets ``behaviours[i]``; connections past the end get the last one."""
    if not behaviours:
        raise ValueError("sequence() needs at least one behaviour")
    return lambda index: behaviours[min(index, len(behaviours) - 1)]


def _resolve(spec: BehaviourSpec, index: int) -> Behaviour:
    chosen = spec if isinstance(spec, Behaviour | str) else spec(index)
    if isinstance(chosen, str):
        if chosen not in BEHAVIOURS:
            raise ValueError(f"unknown fake provider behaviour {chosen!r}; known: {', '.join(BEHAVIOURS)}")
        return BEHAVIOURS[chosen]()
    return chosen


# -- the server ------------------------------------------------------------------------------------


class FakeProvider:
    """The fake STT service on 127.0.0.1 (free port by default), on its own event loop in a daemon thread."""

    def __init__(self, behaviour: BehaviourSpec = "polite", host: str = "127.0.0.1", port: int = 0) -> None:
        self._spec = behaviour
        self._host = host
        self._port = port
        self._records: list[ConnectionRecord] = []
        self._live: dict[int, tuple[asyncio.Task[None], FakeConnection]] = {}
        self._ordinal = itertools.count()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="stt-fake-provider")

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, what the worker's ``STT_BASE_URL`` should be."""
        if self._server is None:
            raise RuntimeError("fake provider not started")
        return f"http://{self._host}:{self._port}"

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://")

    def start(self) -> FakeProvider:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self._host, self._port), self._loop
        ).result(10)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop listening and abort every connection; returns within :data:`STOP_TIMEOUT_S`."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(Exception):
            future.result(max(0.1, deadline - time.monotonic() - 1.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(max(0.1, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self._loop.close()

    def connections(self) -> list[ConnectionRecord]:
        """A consistent snapshot (deep copy) of every connection's record, in arrival order (also after stop)."""
        if not self._loop.is_running():
            return copy.deepcopy(self._records)

        async def snapshot() -> list[ConnectionRecord]:
            return copy.deepcopy(self._records)

        return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(10)

    def wait_for(
        self, predicate: Callable[[list[ConnectionRecord]], bool], timeout: float = 10.0
    ) -> list[ConnectionRecord]:
        """Poll :meth:`connections` until ``predicate`` holds; raises ``TimeoutError`` with the last snapshot."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.connections()
            if predicate(records):
                return records
            if time.monotonic() >= deadline:
                raise TimeoutError(f"fake provider condition not met in {timeout} s: {records!r}")
            time.sleep(0.02)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task, conn in list(self._live.values()):
            conn.abort()
            task.cancel()
        tasks = [task for task, _ in self._live.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = next(self._ordinal)
        record = ConnectionRecord(index=index, request_id=f"fake-{index}", opened_at=time.time())
        self._records.append(record)
        conn = FakeConnection(record, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._live[index] = (task, conn)
        try:
            await self._serve(conn, record, index)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass
        except Exception as exc:
            record.error = repr(exc)
        finally:
            record.closed_at = time.time()
            conn.abort()
            del self._live[index]

    async def _serve(self, conn: FakeConnection, record: ConnectionRecord, index: int) -> None:
        request = await conn.read_request()
        if request is None:
            return
        url = urlsplit(request.path)
        record.path, record.query = url.path, parse_qs(url.query)
        record.headers = list(request.headers.raw_items())
        behaviour = _resolve(self._spec, index)
        record.behaviour = behaviour.name
        refusal = behaviour.refuse(request)
        if refusal is not None:
            record.rejected_status = refusal.status_code
            await conn.reject(refusal)
            return
        if conn.accept(request, silent=behaviour.silent):
            await behaviour.run(conn)
            await conn.wait_closed_bounded()


@contextlib.contextmanager
def running_fake_provider(behaviour: BehaviourSpec = "polite", **kw: Any) -> Iterator[FakeProvider]:
    """A started :class:`FakeProvider` (``kw``: ``host``, ``port``), stopped on exit."""
    fake = FakeProvider(behaviour, **kw).start()
    try:
        yield fake
    finally:
        fake.stop()
