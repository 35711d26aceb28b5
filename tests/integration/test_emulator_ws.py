"""The emulator over real WebSockets: auth, validation, decoding, realism, limits and fault injection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from pipeline.audio import ENCODINGS, Encoding, silence
from pipeline.emulator.engines.tones import synthesize
from pipeline.emulator.faults import Fault
from pipeline.records import AudioFormat
from pipeline.settings import default
from pipeline.stt.client import open_socket
from tests.support.emulator import EmulatorThread, running_emulator

VERSION = {"Cartesia-Version": "2026-03-01"}


@pytest.fixture(scope="module")
def fast() -> Iterator[EmulatorThread]:
    """An emulator that tolerates faster-than-realtime audio, for quick functional tests."""
    with running_emulator(overload_budget_ms=1e9) as emulator:
        yield emulator


def url(emu: EmulatorThread, endpoint: str = "auto", **query: Any) -> str:
    path = "/stt/turns/websocket" if endpoint == "auto" else "/stt/websocket"
    params = {"model": "ink-2", "encoding": "pcm_s16le", "sample_rate": 16000, **query}
    return f"{emu.ws_url}{path}?" + "&".join(f"{k}={v}" for k, v in params.items())


async def read_all(ws: ClientConnection) -> list[dict[str, Any]]:
    """Read until the server closes the socket (as a client must, to drain), whatever the close code."""
    events: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosedError):
        async for message in ws:
            events.append(json.loads(message))
    return events


async def send_chunks(ws: ClientConnection, audio: bytes, size: int) -> None:
    for start in range(0, len(audio), size):
        await ws.send(audio[start : start + size])


def turn_ends(events: list[dict[str, Any]]) -> list[str]:
    return [e["transcript"] for e in events if e["type"] == "turn.end"]


@pytest.fixture
async def auto_ws(fast: EmulatorThread) -> AsyncIterator[ClientConnection]:
    async with connect(url(fast), additional_headers=VERSION) as ws:
        yield ws


# -- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
async def test_every_encoding_and_rate_decodes_exactly(fast: EmulatorThread, encoding: Encoding, rate: int) -> None:
    script = ["Good morning, Dr. Smith!", "It's 9:30 now."]
    audio = synthesize(script, rate, encoding)
    async with connect(url(fast, encoding=encoding, sample_rate=rate), additional_headers=VERSION) as ws:
        await send_chunks(ws, audio, max(1, len(audio) // 37))  # odd chunking on purpose
        await ws.send('{"type":"close"}')
        events = await read_all(ws)
    assert ws.close_code == 1000
    assert "".join(turn_ends(events)) == "Good morning, Dr. Smith! It's 9:30 now."


@pytest.mark.parametrize(
    ("sent", "declared"),
    [
        (("pcm_s16le", 16000), ("pcm_mulaw", 16000)),
        (("pcm_f32le", 16000), ("pcm_s16le", 32000)),
        (("pcm_s16le", 16000), ("pcm_s16le", 8000)),
        (("pcm_mulaw", 8000), ("pcm_alaw", 8000)),
    ],
)
async def test_wrong_declared_format_garbles_without_error(
    fast: EmulatorThread, sent: tuple[Encoding, int], declared: tuple[str, int]
) -> None:
    audio = synthesize(["Hello there.", "How are you?"], sent[1], sent[0])
    async with connect(url(fast, encoding=declared[0], sample_rate=declared[1]), additional_headers=VERSION) as ws:
        await send_chunks(ws, audio, 1600)
        await ws.send('{"type":"close"}')
        events = await read_all(ws)
    assert not [e for e in events if e["type"] == "error"]
    assert "".join(turn_ends(events)) != "Hello there. How are you?"


# -- realism -----------------------------------------------------------------------------------


async def test_events_come_out_as_audio_time_advances(auto_ws: ClientConnection) -> None:
    # The turn ends ~0.8 s into the silence, seen once the server's ~1 s buffer has moved past it.
    first = synthesize("First turn.", 16000, "pcm_s16le", tail_ms=2200)
    second = synthesize(" Second turn.".strip(), 16000, "pcm_s16le", lead_ms=0)
    await auto_ws.send(first)
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["type"] != "turn.end":
        seen.append(json.loads(await asyncio.wait_for(auto_ws.recv(), 5)))
    assert turn_ends(seen) == ["First turn."]
    with pytest.raises(TimeoutError):  # nothing more until more audio arrives
        await asyncio.wait_for(auto_ws.recv(), 0.5)
    await auto_ws.send(second)
    await auto_ws.send('{"type":"close"}')
    rest = await read_all(auto_ws)
    assert turn_ends(rest) == [" Second turn."]


async def test_muted_client_no_audio_means_no_turn_end(auto_ws: ClientConnection) -> None:
    await auto_ws.send(synthesize("Still talking", 16000, "pcm_s16le"))
    events: list[dict[str, Any]] = []
    with pytest.raises(TimeoutError):
        while True:
            events.append(json.loads(await asyncio.wait_for(auto_ws.recv(), 1.0)))
    assert "turn.end" not in [e["type"] for e in events]
    # one second of silence ends the turn, once another pushes it through the server's buffer
    await auto_ws.send(silence("pcm_s16le", 16000) * 2)
    event = json.loads(await asyncio.wait_for(auto_ws.recv(), 5))
    while event["type"] != "turn.end":
        event = json.loads(await asyncio.wait_for(auto_ws.recv(), 5))
    assert event["transcript"] == "Still talking"


async def quiet_events(ws: ClientConnection, quiet_s: float = 0.6) -> list[dict[str, Any]]:
    """Events until none arrive for ``quiet_s`` (the socket stays open)."""
    events: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            events.append(json.loads(await asyncio.wait_for(ws.recv(), quiet_s)))
    return events


TAIL_SCRIPT = ["One two.", 1200, "Three"]


@pytest.mark.parametrize("send_close", [True, False])
async def test_auto_server_buffer_holds_the_tail_until_close(fast: EmulatorThread, send_close: bool) -> None:
    audio = synthesize(TAIL_SCRIPT, 16000, "pcm_s16le", tail_ms=600)  # less than the 1 s buffer
    async with connect(url(fast), additional_headers=VERSION) as ws:
        await ws.send(audio)
        events = await quiet_events(ws)
        assert turn_ends(events) == ["One two."]
        assert " Three" not in [e.get("transcript") for e in events]  # buffered, not yet recognized
        if send_close:
            await ws.send('{"type":"close"}')
            events = await read_all(ws)
            assert turn_ends(events) == [" Three"] and ws.close_code == 1000
    # A client that leaves without `close` never gets the tail: "buffered audio will not be processed".


@pytest.mark.parametrize("command", ["finalize", "close"])
async def test_manual_server_buffer_hangs_onto_the_last_chunk(fast: EmulatorThread, command: str) -> None:
    audio = synthesize(["One two.", 2000, "Three"], 16000, "pcm_s16le", tail_ms=600)  # 2 s: auto-finalized
    async with connect(url(fast, "manual"), additional_headers=VERSION) as ws:
        await ws.send(audio)
        events = await quiet_events(ws)
        assert [e["text"] for e in events if e["type"] == "transcript" and e["is_final"]] == ["One two."]
        assert all("Three" not in e["text"] for e in events)
        await ws.send(command)
        events = await (read_all(ws) if command == "close" else quiet_events(ws))
    finals = [e["text"] for e in events if e["type"] == "transcript" and e["is_final"]]
    assert finals == [" Three"]


async def test_server_buffer_is_configurable() -> None:
    with running_emulator(overload_budget_ms=1e9, server_buffer_ms=0) as emu:
        async with connect(url(emu), additional_headers=VERSION) as ws:
            await ws.send(synthesize(TAIL_SCRIPT, 16000, "pcm_s16le", tail_ms=600))
            events = await quiet_events(ws)
    assert [e.get("transcript") for e in events if e["type"] == "turn.update"][-1] == " Three"


async def test_close_with_no_audio_closes_cleanly(auto_ws: ClientConnection) -> None:
    await auto_ws.send('{"type":"close"}')
    events = await read_all(auto_ws)
    assert [e["type"] for e in events] == ["connected"]
    assert auto_ws.close_code == 1000


async def test_manual_endpoint_over_socket_splits_a_word_on_mid_word_finalize(fast: EmulatorThread) -> None:
    audio = synthesize("Inserting", 16000, "pcm_s16le")
    cut = int(16000 * 2 * (0.2 + 0.04 * 6.5)) // 2 * 2  # lead 200 ms + six and a half 40 ms symbols
    async with connect(url(fast, "manual"), additional_headers=VERSION) as ws:
        await ws.send(audio[:cut])
        await ws.send("finalize")
        await ws.send(audio[cut:])
        await ws.send("close")
        events = await read_all(ws)
    finals = [e["text"] for e in events if e["type"] == "transcript" and e["is_final"]]
    assert finals == ["Insert", "ing"]
    assert [e["type"] for e in events][-1] == "done" and ws.close_code == 1000


async def test_manual_silence_auto_finalizes_without_finalize(fast: EmulatorThread) -> None:
    audio = synthesize("Auto final", 16000, "pcm_s16le", tail_ms=3000)
    async with connect(url(fast, "manual"), additional_headers=VERSION) as ws:
        await ws.send(audio)
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        while not event.get("is_final"):
            event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["text"] == "Auto final"
        await ws.send("close")
        assert [e["type"] for e in await read_all(ws)] == ["done"]


# -- auth, validation, limits ------------------------------------------------------------------


async def test_auth_header_forms_and_refusals() -> None:
    with running_emulator(api_keys=("k1", "k2")) as emu:
        for headers, query in [
            ({"X-API-Key": "k1"}, {}),
            ({"Authorization": "Bearer k2"}, {}),
            ({}, {"access_token": "k1"}),
        ]:
            async with connect(url(emu, **query), additional_headers={**VERSION, **headers}) as ws:
                assert json.loads(await ws.recv())["type"] == "connected"
        for headers in [{}, {"X-API-Key": "nope"}, {"Authorization": "Bearer nope"}]:
            with pytest.raises(InvalidStatus) as refused:
                await connect(url(emu), additional_headers={**VERSION, **headers})
            body = orjson.loads(refused.value.response.body)
            assert refused.value.response.status_code == 401
            assert body["status_code"] == 401 and body["type"] == "error"


@pytest.mark.parametrize(
    ("endpoint", "query", "code"),
    [
        ("auto", {"model": "ink-whisper"}, "model_not_found"),
        ("auto", {"encoding": "mp3"}, "invalid_encoding"),
        ("manual", {"sample_rate": 96000}, "invalid_sample_rate"),
        ("auto", {"turn_end_threshold": 0.9}, "invalid_parameter"),
    ],
)
async def test_invalid_params_error_event_then_close(
    fast: EmulatorThread, endpoint: str, query: dict[str, Any], code: str
) -> None:
    async with connect(url(fast, endpoint, **query), additional_headers=VERSION) as ws:
        events = await read_all(ws)
    assert [e["error_code"] for e in events] == [code]
    assert events[0]["status_code"] == 400 and events[0]["title"] and events[0]["message"]
    assert ws.close_code == 1008


async def test_missing_version_is_rejected(fast: EmulatorThread) -> None:
    async with connect(url(fast)) as ws:
        events = await read_all(ws)
    assert events[0]["error_code"] == "missing_version"
    async with connect(url(fast, cartesia_version="2026-03-01")) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"


async def test_concurrency_limit_refuses_with_429_and_frees_slots() -> None:
    with running_emulator(max_sessions=2) as emu:
        async with connect(url(emu), additional_headers=VERSION), connect(url(emu), additional_headers=VERSION):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url(emu), additional_headers=VERSION)
            assert refused.value.response.status_code == 429
            assert orjson.loads(refused.value.response.body)["error_code"] == "concurrency_limited"
        for _ in range(50):
            if emu.stats()["active"] == 0:
                break
            await asyncio.sleep(0.05)
        async with connect(url(emu), additional_headers=VERSION) as ws:
            assert json.loads(await ws.recv())["type"] == "connected"


async def test_in_stream_429_variant_is_an_error_event_then_close() -> None:
    with running_emulator(max_sessions=1, variants=frozenset({"in_stream_429"})) as emu:
        async with connect(url(emu), additional_headers=VERSION) as first:
            async with connect(url(emu), additional_headers=VERSION) as second:
                events = await read_all(second)
            assert [e["type"] for e in events] == ["error"]
            assert events[0]["status_code"] == 429 and events[0]["error_code"] == "concurrency_limited"
            assert second.close_code == 1008
            await first.send('{"type":"close"}')
            await read_all(first)


async def test_faster_than_realtime_beyond_budget_is_a_5xx_error() -> None:
    with running_emulator() as emu:  # default 2 s budget
        async with connect(url(emu), additional_headers=VERSION) as ws:
            await send_chunks(ws, silence("pcm_s16le", 16000 * 5), 3200)  # 5 s of audio at once
            events = await read_all(ws)
        assert events[-1]["type"] == "error" and events[-1]["status_code"] == 500
        assert events[-1]["error_code"] == "audio_overrun"
        assert ws.close_code == 1011
        assert emu.stats()["overloads"] == 1


async def test_realtime_paced_audio_is_not_overload() -> None:
    with running_emulator(overload_budget_ms=300) as emu:
        async with connect(url(emu), additional_headers=VERSION) as ws:
            start = time.monotonic()
            chunk = silence("pcm_s16le", 1600)
            for k in range(15):  # 1.5 s at realtime, scheduled on an absolute clock
                await asyncio.sleep(max(0.0, start + k * 0.1 - time.monotonic()))
                await ws.send(chunk)
            await ws.send('{"type":"close"}')
            await read_all(ws)
        session = emu.stats()["sessions"][-1]
        assert not session["overloaded"] and session["audio_ms"] == pytest.approx(1500)
        assert session["max_lead_ms"] <= 300
        assert 0.5 < session["realtime_ratio"] <= 1.2


async def test_idle_timeout_closes() -> None:
    with running_emulator(idle_timeout_s=0.3) as emu:
        async with connect(url(emu), additional_headers=VERSION) as ws:
            events = await read_all(ws)
        assert [e["type"] for e in events] == ["connected", "error"]
        assert events[1]["status_code"] == 408 and events[1]["error_code"] == "idle_timeout"
        assert ws.close_code == 1008


async def test_http_stats_health_and_404(fast: EmulatorThread) -> None:
    def get(path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(fast.base_url + path, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert await asyncio.to_thread(get, "/_emulator/health") == (200, {"status": "ok", "engine": "tones"})
    status, stats = await asyncio.to_thread(get, "/_emulator/stats")
    assert status == 200 and {"sessions", "overloads", "active"} <= set(stats)
    assert (await asyncio.to_thread(get, "/nope"))[0] == 404


# -- fault injection ---------------------------------------------------------------------------


async def test_fault_drop_aborts_the_connection_at_an_audio_time(fast: EmulatorThread) -> None:
    fast.emulator.faults.add(Fault("drop", at_audio_ms=500))
    async with connect(url(fast), additional_headers=VERSION) as ws:
        with contextlib.suppress(ConnectionClosed):  # the abort may land while we are still sending
            await send_chunks(ws, silence("pcm_s16le", 16000), 1600)
        with pytest.raises(ConnectionClosedError) as dropped:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    assert dropped.value.rcvd is None  # no close frame: an abnormal closure (1006)
    assert fast.stats()["sessions"][-1]["audio_ms"] == pytest.approx(500)


async def test_fault_5xx_error_event_then_1011(fast: EmulatorThread) -> None:
    fast.emulator.faults.add(Fault("error", at_audio_ms=300, status_code=503))
    async with connect(url(fast), additional_headers=VERSION) as ws:
        with contextlib.suppress(ConnectionClosed):
            await send_chunks(ws, silence("pcm_s16le", 16000), 1600)
        events = await read_all(ws)
    assert events[-1]["status_code"] == 503 and events[-1]["type"] == "error"
    assert ws.close_code == 1011


async def test_fatal_error_closes_at_once_even_while_the_client_keeps_sending(fast: EmulatorThread) -> None:
    fast.emulator.faults.add(Fault("error", at_audio_ms=300, status_code=503))
    chunk = silence("pcm_s16le", 16000)[:320]
    async with connect(url(fast), additional_headers=VERSION) as ws:
        started = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            for _ in range(500):  # a client busy sending small frames, frames still in flight at the error
                await ws.send(chunk)
        await read_all(ws)
        elapsed = time.monotonic() - started
    assert ws.close_code == 1011
    assert elapsed < 3.0
    await asyncio.sleep(0.2)
    assert fast.stats()["sessions"][-1]["close_code"] == 1011


async def test_fault_delay_holds_events_back(fast: EmulatorThread) -> None:
    fast.emulator.faults.add(Fault("delay", delay_ms=400))
    start = time.monotonic()
    async with connect(url(fast), additional_headers=VERSION) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        assert time.monotonic() - start >= 0.4
        await ws.send('{"type":"close"}')
        await read_all(ws)


async def test_the_worker_socket_sends_audio_uncompressed(fast: EmulatorThread) -> None:
    """PCM hardly compresses: the worker's STT socket does not negotiate permessage-deflate, whose cost
    was 12 % of the worker's CPU, although the server offers it."""
    ws = await open_socket(fast.base_url, AudioFormat("pcm_s16le", 16000), "", default("stt_version"))
    try:
        assert ws.protocol.extensions == []
        assert ws.response is not None and "Sec-WebSocket-Extensions" not in ws.response.headers
    finally:
        await ws.close()
    async with connect(url(fast)) as offered:  # the server does offer it to a client that asks
        assert [e.name for e in offered.protocol.extensions] == ["permessage-deflate"]
