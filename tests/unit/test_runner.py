"""The session runner against a scripted WebSocket server on 127.0.0.1 (real sockets, no mocks)."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from pipeline.contract import TranscriptRecord, TurnRecord
from pipeline.records import AudioFormat, InputMessage
from pipeline.runner import SessionRunner
from pipeline.schemas import validate
from pipeline.session import Session, SessionConfig, Taken

S16 = AudioFormat("pcm_s16le", 16000)
Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def server(
    handlers: Iterator[Handler], refusals: Iterator[tuple[HTTPStatus, str] | None] | None = None
) -> AsyncIterator[str]:
    """Serve one handler per connection; ``refusals`` may refuse an upgrade with a status and body."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        refusal = next(refusals, None) if refusals is not None else None
        return None if refusal is None else connection.respond(*refusal)

    async def handle(ws: ServerConnection) -> None:
        await next(handlers)(ws)

    running: Server
    async with serve(handle, "127.0.0.1", 0, process_request=process_request) as running:
        port = running.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


def session(**config: Any) -> Session:
    clock = itertools.count(1_700_000_000_000)
    s = Session("s1", S16, first_offset=0, config=SessionConfig(**config), wall_ms=lambda: next(clock))
    s.accept(InputMessage("s1", "audio", 0, b"\1\0" * 1600, S16), time.monotonic())
    s.accept(InputMessage("s1", "end", 1), time.monotonic())
    return s


async def run(s: Session, url: str, max_size: int = 2**20) -> list[Taken]:
    taken: list[Taken] = []

    def opener() -> Awaitable[ClientConnection]:
        return connect(url, open_timeout=5, max_size=max_size)

    runner = SessionRunner(
        s, connect=opener, emit=taken.append, input_live=lambda: True, backoff_base_s=0.001, backoff_max_s=0.01
    )
    await runner.run()
    return taken


def turns(taken: list[Taken]) -> list[TurnRecord]:
    out = [o.record for t in taken for o in t.outputs if isinstance(o.record, TurnRecord)]
    for record in out:
        validate("turn", record.to_dict())
    return out


async def finish_turn(ws: ServerConnection) -> None:
    """Read until the client's close command, then transcribe one turn and close normally."""
    async for message in ws:
        if message == '{"type":"close"}':
            break
    for event in ({"type": "turn.start"}, {"type": "turn.end", "transcript": "Hi"}):
        await ws.send(orjson.dumps({**event, "request_id": "r"}).decode())
    await ws.close(1000)


async def odd_frames(ws: ServerConnection) -> None:
    await ws.send(b"\x00\xffbinary")
    await ws.send(b'{"type":"connected","request_id":"r"}')  # a JSON event as a binary frame is still read
    await ws.send("[1, 2]")
    await ws.send("not json")
    await finish_turn(ws)


async def test_binary_and_non_object_frames_are_reported_and_the_session_goes_on() -> None:
    s = session()
    async with server(iter([odd_frames])) as url:
        taken = await run(s, url)
    assert s.status == "complete" and s.reconnects == 0
    records = turns(taken)
    errors = [r.error for r in records if r.error is not None]
    assert [e.error_code for e in errors] == ["bad_provider_message"] * 3
    assert [r.type for r in records if r.type != "session.error"] == [
        "session.start",
        "turn.start",
        "turn.end",
        "session.end",
    ]
    final = [o.record for o in taken[-1].outputs if isinstance(o.record, TranscriptRecord)][-1]
    assert final.transcript == "Hi" and final.status == "complete"


async def huge_frame(ws: ServerConnection) -> None:
    await ws.send("x" * 5000)  # beyond the client's max_size
    async for _ in ws:
        pass


async def test_a_frame_beyond_max_size_costs_a_reconnect_not_the_runner() -> None:
    s = session()
    async with server(iter([huge_frame, finish_turn])) as url:
        taken = await run(s, url, max_size=1024)
    assert s.status == "complete" and s.reconnects == 1
    errors = [r.error for r in turns(taken) if r.error is not None]
    assert [(e.error_code, e.retryable) for e in errors] == [("stt_closed", True)]


async def test_refused_upgrades_follow_the_one_retry_rule() -> None:
    s = session()
    refusals = iter([(HTTPStatus.TOO_MANY_REQUESTS, "busy"), (HTTPStatus.UNAUTHORIZED, "bad key " + "k" * 2000)])
    async with server(iter([finish_turn]), refusals) as url:
        taken = await run(s, url)
    assert s.status == "failed" and s.reconnects == 1
    errors = [r.error for r in turns(taken) if r.error is not None]
    assert [(e.status_code, e.error_code, e.retryable) for e in errors] == [
        (429, "stt_connect_failed", True),
        (401, "stt_connect_failed", False),
    ]
    assert errors[0].message == "STT upgrade refused: 429 busy"
    assert errors[1].message.startswith("STT upgrade refused: 401 bad key k") and len(errors[1].message) == 512


async def test_an_unreachable_service_is_retried_until_the_budget_is_spent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    s = session(max_reconnects=2)
    taken = await run(s, f"ws://127.0.0.1:{port}")
    assert s.status == "failed" and s.reconnects == 2
    errors = [r.error for r in turns(taken) if r.error is not None]
    assert [(e.status_code, e.error_code, e.retryable) for e in errors] == [
        (None, "stt_connect_failed", True),
        (None, "stt_connect_failed", True),
        (None, "stt_connect_failed", True),
        (None, "stt_gave_up", False),
    ]
    counted = {"turns": 0, "transcripts": 0}
    for t in taken:  # every batch comes with the checkpoint that counts exactly it and those before
        for output in t.outputs:
            counted[output.topic] += 1
        assert (t.checkpoint.next_seq, t.checkpoint.next_transcript_seq) == (counted["turns"], counted["transcripts"])


MANUAL = AudioFormat("pcm_s16le", 16000, endpoint="manual")


async def test_input_that_arrives_while_the_writer_waits_goes_out_in_order_commands_included() -> None:
    """Audio delivered chunk by chunk to a running session (``notify()`` after each): the server gets
    every byte once and in order, each ``finalize`` right after the audio before it, ``close`` last,
    also when chunks arrive while a command is still on its way."""
    received: list[str | bytes] = []
    closed = asyncio.Event()

    async def record(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)
            if message == "close":
                break
        closed.set()
        await ws.send(orjson.dumps({"type": "done", "request_id": "r"}).decode())
        await ws.close(1000)

    clock = itertools.count(1_700_000_000_000)
    s = Session("s1", MANUAL, first_offset=0, config=SessionConfig(), wall_ms=lambda: next(clock))
    chunks = [bytes([i, 0]) * 800 for i in range(1, 9)]  # 50 ms each, every one different
    plan: list[tuple[str, bytes]] = [("audio", chunks[0]), ("audio", chunks[1]), ("finalize", b"")]
    plan += [("audio", c) for c in chunks[2:5]] + [("finalize", b""), ("audio", chunks[5])]
    plan += [("finalize", b"")] + [("audio", c) for c in chunks[6:]] + [("end", b"")]
    async with server(iter([record])) as url:
        runner = SessionRunner(
            s, connect=lambda: connect(url, open_timeout=5), emit=lambda taken: None, input_live=lambda: True
        )
        task = asyncio.create_task(runner.run())
        for seq, (kind, data) in enumerate(plan):
            s.accept(InputMessage("s1", kind, seq, data, MANUAL if kind == "audio" else None), time.monotonic())  # type: ignore[arg-type]
            runner.notify()
            if seq % 3 == 0:
                await asyncio.sleep(0.02)  # the writer parks between some chunks, not between others
        await asyncio.wait_for(closed.wait(), 10)
        await asyncio.wait_for(task, 10)
    audio = b"".join(m for m in received if isinstance(m, bytes))
    assert audio == b"".join(chunks)
    commands = [(i, m) for i, m in enumerate(received) if isinstance(m, str)]
    assert [m for _, m in commands] == ["finalize", "finalize", "finalize", "close"]
    sent_before = [sum(len(m) for m in received[:i] if isinstance(m, bytes)) for i, _ in commands]
    assert sent_before == [1600 * 2, 1600 * 5, 1600 * 6, 1600 * 8]
    assert received[-1] == "close"

