"""Worker metrics (prometheus-client), in one registry so tests and benchmarks can read them in-process.

Set ``STT_METRICS_PORT`` (or ``--metrics-port``) to serve them at ``http://127.0.0.1:PORT/metrics``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from pipeline.commit import CommitPlan

REGISTRY = CollectorRegistry()

_MS_BUCKETS = (-300, -200, -100, -50, -20, -10, 0, 10, 20, 50, 100, 200, 500, 1000, 2000)
_S_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

PACING_DRIFT_MS = Histogram(
    "stt_pacing_drift_ms",
    "send time minus the frame's due time on the absolute audio clock (negative: sent ahead, within the lead)",
    buckets=_MS_BUCKETS,
    registry=REGISTRY,
)
EVENT_TO_ACK_S = Histogram(
    "stt_event_to_ack_seconds",
    "STT server event received → its output records acknowledged by Kafka (visible to read_uncommitted)",
    buckets=_S_BUCKETS,
    registry=REGISTRY,
)
EVENT_TO_COMMIT_S = Histogram(
    "stt_event_to_commit_seconds",
    "STT server event received → its output records committed (visible to read_committed)",
    buckets=_S_BUCKETS,
    registry=REGISTRY,
)
CLOSE_TO_FINAL_S = Histogram(
    "stt_close_to_final_seconds",
    "close command sent to the STT service → the session's final transcript acknowledged by Kafka",
    buckets=_S_BUCKETS,
    registry=REGISTRY,
)
RECORDS = Counter("stt_input_records_total", "input records consumed", registry=REGISTRY)
DEAD_LETTERS = Counter("stt_dead_letters_total", "records sent to the dead-letter topic", ["reason"], registry=REGISTRY)
SESSIONS_ENDED = Counter("stt_sessions_ended_total", "sessions ended", ["status"], registry=REGISTRY)
OPEN_SESSIONS = Gauge("stt_open_sessions", "sessions with an open STT socket", registry=REGISTRY)
AUDIO_SENT_S = Counter("stt_audio_sent_seconds_total", "audio sent to STT (silence fill included)", registry=REGISTRY)
SILENCE_SENT_S = Counter("stt_silence_sent_seconds_total", "silence fill sent to STT", registry=REGISTRY)


def serve(port: int) -> None:
    start_http_server(port, addr="127.0.0.1", registry=REGISTRY)


def observe_acked(future: asyncio.Future[object], created_at: float) -> None:
    """A record's send acknowledged (a done callback of its send future): event → acked."""
    if not future.cancelled() and future.exception() is None:
        EVENT_TO_ACK_S.observe(time.monotonic() - created_at)


def observe_committed(plan: CommitPlan) -> None:
    """Latencies of a committed transaction's records: event → committed, close → session final."""
    now = time.monotonic()
    for record in plan.records:
        if record.created_at:
            EVENT_TO_COMMIT_S.observe(now - record.created_at)
        if record.close_sent_at is not None:
            CLOSE_TO_FINAL_S.observe(now - record.close_sent_at)
