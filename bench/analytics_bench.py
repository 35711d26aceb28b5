"""Benchmark the analytics app next to the worker, in the same run, on the same events.

Starts a broker (or uses ``KAFKA_BOOTSTRAP_SERVERS_TEST``), the tones emulator (in-process thread), one
worker process and one `stt-pipeline analytics` process; streams ``--sessions`` realtime sessions of
``--turns`` turns; waits until the analytics app has every session final. Then it reports:

- CPU (utime+stime from /proc) of the worker and of the analytics app from the start of the stream until
  analytics has the last final, each per 1,000 `stt.turns` records (the turn events both handled);
- lag from a `turn.end` to its row in DuckDB: ``ingested_at - kafka_ts`` of every `turns` row, where
  ``kafka_ts`` is the record's Kafka timestamp (set when the worker produced it; the worker commits
  it at most ``STT_COMMIT_INTERVAL_MS`` later, so the lag includes the wait for the commit), p50/p99.

It asserts nothing about timings (the machine is small and shared). Run:
``.venv/bin/python bench/analytics_bench.py [--sessions 20 --turns 6]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.analytics.core import percentile  # noqa: E402
from pipeline.kafka.topics import ensure_topics  # noqa: E402
from tests.support.analytics import AnalyticsProcess, cpu_seconds  # noqa: E402
from tests.support.config import worker_config  # noqa: E402
from tests.support.emulator import running_emulator  # noqa: E402
from tests.support.kafka import KafkaBroker, free_ports  # noqa: E402
from tests.support.scripts import Plan, read_topic, stream  # noqa: E402
from tests.support.workers import WorkerProcess  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args(argv)
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS_TEST", "").strip()
    broker = None if external else KafkaBroker().start()
    bootstrap = external or broker.bootstrap  # type: ignore[union-attr]
    work = Path(tempfile.mkdtemp(prefix="analytics-bench-"))
    try:
        with running_emulator() as emulator:
            (port,) = free_ports(1)
            config = worker_config(
                bootstrap,
                emulator.base_url,
                topic_partitions=3,
                silence_budget_ms=2000.0,
                analytics_port=port,
                analytics_db=work / "analytics.duckdb",
                analytics_id=f"bench-{port}",
            )
            asyncio.run(ensure_topics(config))
            plan = Plan.make(args.sessions, random.Random(7), turns=(args.turns, args.turns), tag=f"b{port}")
            worker = WorkerProcess(config, work / "worker.log", f"bench-{port}").start()
            analytics = AnalyticsProcess(config, work / "analytics.log").start()
            try:
                analytics.wait_ready()
                time.sleep(2.0)
                cpu0 = cpu_seconds(worker.proc.pid), cpu_seconds(analytics.pid)  # type: ignore[union-attr]
                started = time.monotonic()
                asyncio.run(stream(bootstrap, config.audio_topic, plan))
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    counts = analytics.get("/stats?minutes=60")[1]["total"]["counts"]
                    if sum(v for k, v in counts.items() if k.startswith("sessions_ended.")) >= args.sessions:
                        break
                    time.sleep(0.2)
                wall = time.monotonic() - started
                cpu1 = cpu_seconds(worker.proc.pid), cpu_seconds(analytics.pid)  # type: ignore[union-attr]
                turns = asyncio.run(
                    read_topic(
                        bootstrap,
                        config.turns_topic,
                        until=lambda rs: sum(r["type"] == "session.end" for r in rs) >= args.sessions,
                    )
                )
                lags = [int(r["lag"]) for r in analytics.query("SELECT ingested_at - kafka_ts AS lag FROM turns")]
            finally:
                analytics.terminate()
                worker.terminate()
    finally:
        if broker is not None:
            broker.stop()
    events = len(turns)
    worker_cpu, analytics_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    report = {
        "sessions": args.sessions,
        "turn_events": events,
        "turn_end_rows": len(lags),
        "wall_s": round(wall, 1),
        "worker_cpu_s_per_1000_turn_events": round(worker_cpu * 1000 / events, 3),
        "analytics_cpu_s_per_1000_turn_events": round(analytics_cpu * 1000 / events, 3),
        "turn_end_to_duckdb_lag_ms": {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99), "max": max(lags)},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
