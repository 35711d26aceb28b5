"""The hostile fake STT provider, checked behaviour by behaviour with a plain `websockets` client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.fake_provider import (
    HUGE_DEFAULT,
    UNKNOWN_EVENTS,
    Behaviour,
    FakeProvider,
    close_1000_no_events,
    error_event,
    events_after_close,
    huge_message,
    never_answer,
    polite,
    reject_upgrade,
    running_fake_provider,
    sequence,
)

KEY = "sk-fake-test-key-123"
HEADERS = {"Authorization": f"Bearer {KEY}", "Cartesia-Version": "2026-08-14"}
QUERY = "?model=ink-2&encoding=pcm_s16le&sample_rate=16000"
CHUNK = b"\x00" * 3200  # 100 ms of pcm_s16le at 16 kHz
CLOSE = '{"type":"close"}'
POLITE_2_5_S = ["connected"] + ["turn.start", "turn.update", "turn.end"] * 3


def url(fake: FakeProvider) -> str:
    return f"{fake.ws_url}/stt/turns/websocket{QUERY}"


async def read_all(ws: ClientConnection) -> list[str | bytes]:
    """Every message until the server closes (or the socket dies)."""
    messages: list[str | bytes] = []
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            messages.append(message)
    return messages


async def run_session(fake: FakeProvider, audio_chunks: int = 25) -> tuple[list[str | bytes], ClientConnection]:
    """Send ``audio_chunks`` x 100 ms of audio, then the close command, and read to the end."""
    async with connect(url(fake), additional_headers=HEADERS, max_size=2**22, close_timeout=2) as ws:
        for _ in range(audio_chunks):
            await ws.send(CHUNK)
        await ws.send(CLOSE)
        messages = await read_all(ws)
    return messages, ws


def types(messages: list[str | bytes]) -> list[Any]:
    """Event types of the JSON-object messages, in order."""
    out = []
    for message in messages:
        with contextlib.suppress(ValueError):
            event = json.loads(message)
            if isinstance(event, dict):
                out.append(event.get("type"))
    return out


def parse_only_objects(messages: list[str | bytes]) -> list[dict[str, Any]]:
    return [e for m in messages if isinstance(m, str) for e in [_try_json(m)] if isinstance(e, dict)]


def _try_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


# -- polite --------------------------------------------------------------------------------------


async def test_polite_serves_turns_drains_on_close_and_records_the_request() -> None:
    with running_fake_provider("polite") as fake:
        messages, ws = await run_session(fake)
        [record] = fake.wait_for(lambda rs: len(rs) == 1 and rs[0].closed)
    assert types(messages) == POLITE_2_5_S
    events = parse_only_objects(messages)
    assert [e["transcript"] for e in events if e["type"] == "turn.end"] == ["hello"] * 3
    assert all(e["request_id"] == record.request_id for e in events)
    assert ws.close_code == 1000
    assert record.behaviour == "polite"
    assert record.path == "/stt/turns/websocket"
    assert record.query == {"model": ["ink-2"], "encoding": ["pcm_s16le"], "sample_rate": ["16000"]}
    assert record.header("authorization") == f"Bearer {KEY}"
    assert record.header("Cartesia-Version") == "2026-08-14"
    assert (record.audio_bytes, record.audio_frames) == (25 * len(CHUNK), 25)
    assert record.text_commands == [CLOSE] and record.text_count == 1
    assert (record.close_sent, record.close_received) == (1000, 1000)
    assert record.error is None


async def test_polite_turn_length_follows_the_declared_format() -> None:
    with running_fake_provider(polite(text="hi", turn_audio_ms=500)) as fake:
        async with connect(f"{fake.ws_url}/stt/turns/websocket?encoding=pcm_mulaw&sample_rate=8000") as ws:
            await ws.send(b"\xff" * 8000)  # 1 s of μ-law at 8 kHz: exactly two 500 ms turns
            await ws.send(CLOSE)
            messages = await read_all(ws)
    assert types(messages) == ["connected"] + ["turn.start", "turn.update", "turn.end"] * 2


# -- garbage injected into an otherwise polite stream --------------------------------------------


async def test_invalid_json() -> None:
    with running_fake_provider("invalid_json") as fake:
        messages, ws = await run_session(fake)
    bad = [m for m in messages if isinstance(m, str) and _try_json(m) is None]
    assert bad == ["this is {not json"]
    assert types(messages) == POLITE_2_5_S
    assert ws.close_code == 1000


async def test_json_array() -> None:
    with running_fake_provider("json_array") as fake:
        messages, _ = await run_session(fake)
    arrays = [_try_json(m) for m in messages if isinstance(m, str) and isinstance(_try_json(m), list)]
    assert arrays == [[{"type": "turn.end", "transcript": "array"}]]
    assert types(messages) == POLITE_2_5_S


async def test_binary() -> None:
    with running_fake_provider("binary") as fake:
        messages, _ = await run_session(fake)
    assert [type(m) for m in messages].count(bytes) == 1
    assert types(messages) == POLITE_2_5_S


async def test_huge_message() -> None:
    with running_fake_provider(huge_message()) as fake:
        messages, _ = await run_session(fake)
        [record] = fake.connections()
    huge = [e for e in parse_only_objects(messages) if len(e.get("transcript", "")) > 1000]
    assert len(huge) == 1
    assert huge[0]["type"] == "turn.update" and len(huge[0]["transcript"]) == HUGE_DEFAULT
    assert "<huge_message>" in record.events_sent


async def test_unknown_types() -> None:
    with running_fake_provider("unknown_types") as fake:
        messages, ws = await run_session(fake)
    known = {"connected", "turn.start", "turn.update", "turn.end"}
    odd = [m for m in messages if isinstance(m, str) and _try_json(m).get("type") not in known]
    assert odd == list(UNKNOWN_EVENTS)
    assert ws.close_code == 1000


async def test_events_after_close_keeps_talking_after_the_close_command() -> None:
    with running_fake_provider(events_after_close(turns=2, interval_s=0.01)) as fake:
        messages, ws = await run_session(fake)
    assert types(messages) == POLITE_2_5_S + ["turn.start", "turn.update", "turn.end"] * 2
    assert [e["transcript"] for e in parse_only_objects(messages) if e["type"] == "turn.end"][-2:] == ["late"] * 2
    assert ws.close_code == 1000


async def test_turn_end_without_start() -> None:
    with running_fake_provider("turn_end_without_start") as fake:
        messages, _ = await run_session(fake)
    assert types(messages) == ["connected", "turn.end", "turn.end", "turn.end"]


# -- terminal misbehaviours ----------------------------------------------------------------------


async def test_close_1000_no_events() -> None:
    with running_fake_provider("close_1000_no_events") as fake:
        async with connect(url(fake), additional_headers=HEADERS) as ws:
            await ws.send(CHUNK)
            messages = await read_all(ws)
        [record] = fake.wait_for(lambda rs: len(rs) == 1 and rs[0].closed)
    assert messages == []
    assert ws.close_code == 1000
    assert (record.close_sent, record.close_received, record.events_sent) == (1000, 1000, [])


@pytest.mark.parametrize(("status", "code"), [(429, "concurrency_limited"), (500.0, None), (503, "overloaded")])
async def test_error_event_then_1011(status: float, code: str | None) -> None:
    with running_fake_provider(error_event(status, code)) as fake:
        async with connect(url(fake), additional_headers=HEADERS) as ws:
            await ws.send(CHUNK)
            messages = await read_all(ws)
    [event] = [json.loads(m) for m in messages]
    assert event["type"] == "error" and event["title"] and event["message"]
    assert event["status_code"] == status and type(event["status_code"]) is type(status)
    assert event.get("error_code") == code
    assert ws.close_code == 1011


async def test_never_answer_leaves_the_close_frame_unanswered_and_tcp_open() -> None:
    with running_fake_provider("never_answer") as fake:
        ws = await connect(url(fake), additional_headers=HEADERS, close_timeout=1.0)
        for _ in range(5):
            await ws.send(CHUNK)
        await ws.send(CLOSE)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        started = time.monotonic()
        closing = asyncio.create_task(ws.close())
        [seen] = await asyncio.to_thread(fake.wait_for, lambda rs: rs[0].close_received == 1000, 2.0)
        assert not seen.closed  # the client's close frame arrived; the fake keeps the TCP connection
        await closing
        elapsed = time.monotonic() - started
        [record] = fake.wait_for(lambda rs: rs[0].closed)
    assert elapsed >= 0.9  # the client waited its whole close_timeout for a reply
    assert ws.protocol.close_rcvd is None
    assert (record.audio_bytes, record.text_commands) == (5 * len(CHUNK), [CLOSE])
    assert (record.close_sent, record.events_sent) == (None, [])


async def test_reject_upgrade_with_status_and_body() -> None:
    with running_fake_provider(reject_upgrade(503, "busy, come back later")) as fake:
        with pytest.raises(InvalidStatus) as refused:
            await connect(url(fake), additional_headers=HEADERS)
        [record] = fake.connections()
    assert refused.value.response.status_code == 503
    assert refused.value.response.body == b"busy, come back later"
    assert KEY not in refused.value.response.body.decode()
    assert (record.rejected_status, record.header("Authorization")) == (503, f"Bearer {KEY}")


async def test_reject_upgrade_echo_auth_leaks_the_key_in_the_body() -> None:
    with (
        running_fake_provider(reject_upgrade(401, "denied", echo_auth=True)) as fake,
        pytest.raises(InvalidStatus) as refused,
    ):
        await connect(url(fake), additional_headers=HEADERS)
    assert refused.value.response.status_code == 401
    assert f"Bearer {KEY}" in refused.value.response.body.decode()


# -- selection per connection and teardown -------------------------------------------------------


async def test_per_connection_behaviour_lets_a_reconnect_succeed() -> None:
    with running_fake_provider(sequence("close_1000_no_events", polite())) as fake:
        first, _ = await run_session(fake, audio_chunks=1)
        second, ws = await run_session(fake, audio_chunks=10)
        third, _ = await run_session(fake, audio_chunks=10)
        records = fake.wait_for(lambda rs: len(rs) == 3 and all(r.closed for r in rs))
    assert first == []
    assert types(second) == types(third) == ["connected", "turn.start", "turn.update", "turn.end"]
    assert ws.close_code == 1000
    assert [r.behaviour for r in records] == ["close_1000_no_events", "polite", "polite"]
    assert [r.index for r in records] == [0, 1, 2]


async def test_callable_gets_the_connection_index() -> None:
    def choose(index: int) -> Behaviour:
        return error_event(503, "overloaded") if index % 2 == 0 else close_1000_no_events()

    with running_fake_provider(choose) as fake:
        for _ in range(3):
            await run_session(fake, audio_chunks=1)
        records = fake.wait_for(lambda rs: len(rs) == 3 and all(r.closed for r in rs))
    assert [r.close_sent for r in records] == [1011, 1000, 1011]


async def test_stop_returns_promptly_with_hostile_connections_open() -> None:
    fake = FakeProvider(never_answer()).start()
    ws = await connect(url(fake), additional_headers=HEADERS, close_timeout=30)
    await ws.send(CHUNK)
    closing = asyncio.create_task(ws.close())  # would wait 30 s for a reply that never comes
    raw = socket.create_connection(("127.0.0.1", int(fake.base_url.rsplit(":", 1)[1])))  # no handshake
    try:
        await asyncio.to_thread(fake.wait_for, lambda rs: len(rs) == 2 and rs[0].close_received == 1000)
        started = time.monotonic()
        await asyncio.to_thread(fake.stop)
        assert time.monotonic() - started < 5.0
        await asyncio.wait_for(closing, 2.0)  # the fake's abort ended the client's wait
        assert raw.recv(1) == b""
        assert all(r.closed for r in fake.connections())
    finally:
        raw.close()
        closing.cancel()


def test_usable_from_sync_code() -> None:
    with running_fake_provider(reject_upgrade(418, "teapot")) as fake:
        assert fake.base_url.startswith("http://127.0.0.1:")
        assert fake.connections() == []
