"""The bench's profile summary: py-spy's raw stacks charged to components, the standard library to its caller."""

from __future__ import annotations

from pathlib import Path

from bench.profile import KAFKA, LOOP, PEER, PIPELINE, SDK, WEBSOCKET, charge, read, shares

MAIN = "<module> (bench/worker_peer.py:66);main_with_settings (bench/peer.py:75);run (pipeline/eventloop.py:30)"
ROOT = f"{MAIN};Runner.run (asyncio/runners.py:118)"  # uvloop: what it runs is above its entry point


def test_a_socket_write_is_charged_to_the_library_that_made_it() -> None:
    kafka = f"{ROOT};Sender._send_produce_req (aiokafka/producer/sender.py:1);StreamWriter.write (asyncio/streams.py:2)"
    assert charge(kafka) == KAFKA
    stt = (
        f"{ROOT};SessionRunner._write (pipeline/runner.py:3);send_now (pipeline/stt/client.py:4);write (asyncio/x.py:5)"
    )
    assert charge(stt) == WEBSOCKET


def test_the_worker_code_is_charged_with_the_standard_library_it_calls() -> None:
    assert (
        charge(f"{ROOT};Session.take (pipeline/session.py:1);__init__ (<string>:1);replace (dataclasses.py:2)")
        == PIPELINE
    )


def test_a_stack_with_only_the_peer_main_and_the_loop_is_the_event_loop() -> None:
    assert charge(ROOT) == LOOP
    naive = "<module> (bench/naive_bridge.py:1);main (bench/naive_bridge.py:2);run (asyncio/runners.py:3)"
    asyncio_loop = f"{naive};BaseEventLoop.run_forever (asyncio/base_events.py:4)"
    asyncio_loop += ";BaseEventLoop._run_once (asyncio/base_events.py:5)"
    assert charge(f"{asyncio_loop};select (selectors.py:6)") == LOOP
    assert (
        charge(f"{asyncio_loop};Handle._run (asyncio/events.py:7);_read_ready (asyncio/selector_events.py:8)") == LOOP
    )
    assert charge(f"{asyncio_loop};Handle._run (asyncio/events.py:7);bridge (bench/naive_bridge.py:9)") == PEER


def test_the_naive_peers_own_code_and_the_sdk_are_told_apart() -> None:
    naive = "<module> (bench/naive_bridge.py:1);Handle._run (asyncio/events.py:7);bridge (bench/naive_bridge.py:9)"
    assert charge(naive) == PEER
    assert charge(f"{naive};send (cartesia/stt/socket.py:3);dumps (json/__init__.py:4)") == SDK


def test_shares_weigh_stacks_by_their_counts(tmp_path: Path) -> None:
    raw = (
        f"{ROOT};Fetcher.next (aiokafka/consumer/fetcher.py:1) 3\n"
        f"{ROOT};Session.poll (pipeline/session.py:2) 1\n"
        "not a sample line\n"
    )
    assert shares(raw) == {KAFKA: 0.75, PIPELINE: 0.25}
    path = tmp_path / "worker.txt"
    path.write_text(raw)
    assert read(path) == shares(raw)
    assert read(tmp_path / "missing.txt") == {} and shares("") == {}
