"""The worker's HTTP endpoints on a real broker: readiness before and after the assignment, liveness
with a blocked event loop, and the Prometheus series after a known workload (parsed with
``prometheus_client.parser``)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.emulator.engines.tones import synthesize
from pipeline.endpoints import StatusServer
from pipeline.worker import Worker
from tests.support.config import worker_config
from tests.support.fake_provider import error_event, polite, running_fake_provider, sequence
from tests.support.harness import produce
from tests.support.scripts import Record, audio_record, control_record, read_topic

pytestmark = pytest.mark.kafka

STT_PIPELINE = str(Path(sys.executable).with_name("stt-pipeline"))


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def tone_session(session_id: str, text: str, rate: int = 16000) -> list[Record]:
    pcm = synthesize(text, rate, "pcm_s16le")
    chunk = rate // 10 * 2
    records = [
        audio_record(session_id, i, pcm[o : o + chunk], "pcm_s16le", rate)
        for i, o in enumerate(range(0, len(pcm), chunk))
    ]
    return [*records, control_record(session_id, len(records), "end")]


@pytest.fixture
async def stopper() -> AsyncIterator[list[tuple[asyncio.Event, asyncio.Task[None], StatusServer]]]:
    running: list[tuple[asyncio.Event, asyncio.Task[None], StatusServer]] = []
    yield running
    for stop, task, server in running:
        stop.set()
        await asyncio.wait_for(task, 60)
        server.stop()


async def test_readiness_liveness_and_metrics_of_a_known_workload(
    kafka_bootstrap: str, stopper: list[tuple[asyncio.Event, asyncio.Task[None], StatusServer]]
) -> None:
    with running_fake_provider(sequence(error_event(503, "overloaded"), polite("fine"))) as fake:
        config = worker_config(
            kafka_bootstrap, fake.base_url, topic_partitions=1, commit_interval_ms=100, health_deadline_s=0.5
        )
        worker = Worker(config)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        server = StatusServer(
            worker,
            asyncio.get_running_loop(),
            host="127.0.0.1",
            port=0,
            deadline_s=config.health_deadline_s,
            stt_window_s=config.ready_stt_window_s,
            alive=lambda: not task.done(),
        )
        port = server.start()
        stopper.append((stop, task, server))

        status, body = await asyncio.to_thread(get, port, "/readyz")
        assert status == 503, body
        reason = json.loads(body)
        assert reason["ready"] is False
        assert "not running" in reason["reason"] or "not joined" in reason["reason"]

        for _ in range(600):
            status, body = await asyncio.to_thread(get, port, "/readyz")
            if status == 200:
                break
            assert not task.done(), task
            await asyncio.sleep(0.1)
        assert status == 200, body
        assert json.loads(body) == {"ready": True, "reason": "ready"}
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200

        before = await asyncio.to_thread(samples, port)
        session_id = f"ops-{uuid.uuid4().hex[:6]}"
        junk: Record = (b"junk-" + uuid.uuid4().hex[:6].encode(), [("type", b"audio")], b"no seq, no format")
        await produce(kafka_bootstrap, config.audio_topic, [junk, *tone_session(session_id, "Count me.")])
        await read_topic(
            kafka_bootstrap, config.turns_topic, until=lambda rs: any(r["type"] == "session.end" for r in rs)
        )
        for _ in range(100):  # the session's end is counted once its records are committed
            after = await asyncio.to_thread(samples, port)
            if value(after, "stt_sessions_ended_total", status="complete") > value(
                before, "stt_sessions_ended_total", status="complete"
            ):
                break
            await asyncio.sleep(0.1)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("stt_sessions_ended_total", status="complete") == 1
        assert delta("stt_reconnects_total", cause="status_5xx") == 1
        assert (
            sum(v for (n, _), v in after.items() if n == "stt_reconnects_total")
            - sum(v for (n, _), v in before.items() if n == "stt_reconnects_total")
            == 1
        )
        assert delta("stt_provider_errors_total", code="503") == 1
        dead = {labels: v for (n, labels), v in after.items() if n == "stt_dead_letters_total"}
        dead_before = {labels: v for (n, labels), v in before.items() if n == "stt_dead_letters_total"}
        assert sum(dead.values()) - sum(dead_before.values()) == 1
        assert delta("stt_input_records_total") == len(tone_session(session_id, "Count me.")) + 1
        assert value(after, "stt_partition_lag_records", partition="0") == 0
        assert value(after, "stt_partition_lag_seconds", partition="0") == 0
        assert value(after, "stt_partition_open_sessions", partition="0") == 0
        assert value(after, "stt_assigned_partitions") == 1
        assert value(after, "stt_transaction_commits_total") >= 1
        assert delta("stt_transaction_seconds_count") >= 1
        assert value(after, "stt_transaction_fenced_total") == 0
        assert value(after, "process_cpu_seconds_total") > 0
        assert any(n == "python_gc_collections_total" for n, _ in after)
        assert any(n == "stt_pacing_drift_seconds_count" for n, _ in after)

        status, body = await asyncio.to_thread(get, port, "/status")
        snapshot = json.loads(body)
        assert status == 200 and snapshot["joined"] is True
        assert snapshot["counters"]["reconnects"] == 1 and snapshot["counters"]["dead_letters"] == 1

        # Block the worker's event loop: /healthz answers 503 from the server's thread meanwhile.
        during: list[tuple[int, bytes]] = []
        probe = threading.Thread(target=lambda: (time.sleep(0.3), during.append(get(port, "/healthz"))))
        probe.start()
        time.sleep(2.0)  # noqa: ASYNC251  (the injected fault: a blocking call on the worker's loop)
        probe.join()
        assert during[0][0] == 503, during
        assert "did not answer" in json.loads(during[0][1])["reason"]
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200


def test_a_port_that_cannot_be_bound_fails_start_up_with_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env: dict[str, Any] = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("STT_", "KAFKA_", "CARTESIA_"))},
            "STT_HTTP_HOST": "127.0.0.1",
            "STT_HTTP_PORT": str(port),
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        }
        done = subprocess.run([STT_PIPELINE, "worker"], env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"cannot serve HTTP on 127.0.0.1:{port} (STT_HTTP_HOST, STT_HTTP_PORT)" in done.stderr.decode()
