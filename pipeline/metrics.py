"""Worker metrics (prometheus-client), in one registry so tests and benchmarks can read them in-process.

Prometheus conventions: base units (seconds, bytes), ``_total`` on counters. Two kinds of series:

- events counted where they happen (the module-level metrics below, in :data:`REGISTRY`, with the
  process, platform and GC collectors);
- the worker's state read at scrape time from :meth:`Worker.snapshot` by :class:`WorkerCollector`
  (per-partition lag, open sessions, transactions, fencing), so it is never out of step with
  ``/status``.

:mod:`pipeline.endpoints` serves both at ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from pipeline.commit import CommitPlan
    from pipeline.errors import ProviderError
    from pipeline.snapshot import WorkerSnapshot

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_DRIFT_BUCKETS = (-0.3, -0.2, -0.1, -0.05, -0.02, -0.01, 0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)
# Latency buckets fine where the worker's targets are read, so a p99 read from them is within a few ms of
# the exact one: 2.5 ms steps to 20 ms (event → acked: live read_uncommitted views), 10 ms steps from 100
# to 300 ms (event → committed: up to a commit interval, 200 ms by default, plus a commit); coarse beyond.
LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.035, 0.04),
    *(0.05, 0.06, 0.07, 0.08, 0.09),
    *(round(0.1 + 0.01 * i, 2) for i in range(21)),
    *(0.35, 0.4, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30),
)

GC_PAUSE_S = Histogram(
    "stt_gc_pause_seconds",
    "cyclic garbage collections, by generation: the whole process (every session's pacing) stops meanwhile",
    ["generation"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1),
    registry=REGISTRY,
)
for _generation in ("0", "1", "2"):
    GC_PAUSE_S.labels(_generation)  # every generation exported from the start, at zero
PACING_DRIFT_S = Histogram(
    "stt_pacing_drift_seconds",
    "send time minus the frame's due time on the absolute audio clock (negative: sent ahead, within the lead)",
    buckets=_DRIFT_BUCKETS,
    registry=REGISTRY,
)
EVENT_TO_ACK_S = Histogram(
    "stt_event_to_ack_seconds",
    "STT server event received → its output records acknowledged by Kafka (visible to read_uncommitted)",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
EVENT_TO_COMMIT_S = Histogram(
    "stt_event_to_commit_seconds",
    "STT server event received → its output records committed (visible to read_committed)",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CLOSE_TO_FINAL_S = Histogram(
    "stt_close_to_final_seconds",
    "close command sent to the STT service → the session's final transcript acknowledged by Kafka",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TRANSACTION_S = Histogram(
    "stt_transaction_seconds",
    "one partition's commit: plan taken → Kafka committed it (its remaining records, checkpoints, offset, end)",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RECORDS = Counter("stt_input_records_total", "input records consumed", registry=REGISTRY)
DEAD_LETTERS = Counter("stt_dead_letters_total", "records sent to the dead-letter topic", ["reason"], registry=REGISTRY)
SESSIONS_ENDED = Counter("stt_sessions_ended_total", "sessions ended", ["status"], registry=REGISTRY)
OPEN_SESSIONS = Gauge("stt_open_sessions", "sessions with an open STT socket", registry=REGISTRY)
AUDIO_SENT_S = Counter("stt_audio_sent_seconds_total", "audio sent to STT (silence fill included)", registry=REGISTRY)
SILENCE_SENT_S = Counter("stt_silence_sent_seconds_total", "silence fill sent to STT", registry=REGISTRY)
RECONNECTS = Counter(
    "stt_reconnects_total",
    "STT reconnections by cause: status_5xx, rate_limited, transport (could not connect), closed (socket lost)",
    ["cause"],
    registry=REGISTRY,
)
STT_ERRORS = Counter(
    "stt_provider_errors_total",
    "STT provider errors by code: the HTTP-style status, else the pipeline's error code",
    ["code"],
    registry=REGISTRY,
)
ANOMALIES = Counter(
    "stt_normalizer_anomalies_total",
    "STT event sequences the normalizers repaired or ignored, by kind (unknown_event: an unknown type)",
    ["kind"],
    registry=REGISTRY,
)


def error_code(error: ProviderError) -> str:
    """The ``code`` label of an STT error: its status, else its own code."""
    if error.status_code is not None:
        return str(error.status_code)
    return error.error_code or "unknown"


def reconnect_cause(error: ProviderError | None) -> str:
    """The ``cause`` label of a reconnection caused by ``error``."""
    if error is None:
        return "unknown"
    if error.status_code == 429:
        return "rate_limited"
    if error.status_code is not None:
        return "status_5xx"
    if error.error_code == "stt_closed":
        return "closed"
    return "transport"


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


class WorkerCollector(Collector):
    """Series read from a worker snapshot at scrape time. ``snapshot`` returns None when the worker's
    event loop does not answer (then these series are left out of the scrape)."""

    def __init__(self, snapshot: Callable[[], WorkerSnapshot | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if snap is None:
            return
        lag = GaugeMetricFamily(
            "stt_partition_lag_records",
            "records between the consumer's position and the high watermark",
            labels=["partition"],
        )
        lag_s = GaugeMetricFamily(
            "stt_partition_lag_seconds",
            "age of the newest record read while the partition is behind (0: at the end)",
            labels=["partition"],
        )
        sessions = GaugeMetricFamily("stt_partition_open_sessions", "open sessions per partition", labels=["partition"])
        state = GaugeMetricFamily(
            "stt_partition_state", "1 for the partition's current state", labels=["partition", "state"]
        )
        now_ms = time.time() * 1000
        for p in snap.partitions:
            label = str(p.partition)
            lag.add_metric([label], float(p.behind or 0))
            seconds = 0.0
            if p.behind and p.last_record_ms is not None:
                seconds = max(0.0, (now_ms - p.last_record_ms) / 1000)
            lag_s.add_metric([label], seconds)
            sessions.add_metric([label], float(p.open_sessions))
            state.add_metric([label, p.state], 1.0)
        yield from (lag, lag_s, sessions, state)
        yield GaugeMetricFamily(
            "stt_assigned_partitions", "input partitions assigned to this worker", len(snap.partitions)
        )
        yield GaugeMetricFamily(
            "stt_worker_joined", "1 when the worker holds an assignment from the group", snap.joined
        )
        c = snap.counters
        yield CounterMetricFamily("stt_transaction_commits", "Kafka transactions committed", c.transactions)
        yield CounterMetricFamily(
            "stt_transaction_aborts", "Kafka transactions aborted or failed (retried)", c.transaction_failures
        )
        yield CounterMetricFamily("stt_transaction_fenced", "partitions dropped: another worker fenced us", c.fenced)
        yield CounterMetricFamily("stt_sessions_opened", "sessions opened", c.sessions_opened)
        yield CounterMetricFamily("stt_sessions_resumed", "sessions resumed from a checkpoint", c.sessions_resumed)
        yield CounterMetricFamily("stt_backpressure_pauses", "partitions paused for queued audio", c.pauses)
        yield CounterMetricFamily("stt_quarantined_records", "output records Kafka refused, quarantined", c.quarantined)
