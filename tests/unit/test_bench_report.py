"""The bench's table: peers found by kind (worker, naive, the intake floor), whichever ran."""

from __future__ import annotations

import argparse
from typing import Any

from bench.profile import KAFKA, PIPELINE
from bench.report import floor_line, memory_slope, profile_lines, render


def peer(kind: str, cpu_s: float, sessions: int = 10, rss_kib: int = 50_000) -> dict[str, Any]:
    q = {"p50": 1.0, "p99": 2.0}
    report: dict[str, Any] = {
        "memory": {
            "peak_kib": rss_kib,
            "peak_sessions": sessions,
            "rss_at_peak_sessions_kib": rss_kib,
            "buffered_at_peak_sessions_kib": 0,
        }
    }
    if kind != "floor":
        report.update(drift_ms=q, late_100ms=0.0, ack_ms=q, commit_ms=q, silence_fill_s=0.0)
    return {
        "peer": kind,
        "sessions": sessions,
        "audio_s": 100.0,
        "wall_s": 10.0,
        "cpu_s": {"peer": cpu_s, "emulator": 1.0, "kafka": 1.0, "load": 1.0},
        "exact": 0 if kind == "floor" else sessions,
        "mismatches": [],
        "end_to_final_ms": [1.0],
        "late_ms_p99": 1.0,
        "emulator": {"overloads": 0, "errors": 0},
        "report": report,
    }


ARGS = argparse.Namespace(seconds=20.0, encoding="pcm_s16le", sample_rate=16000, chunk_ms=100.0, partitions=6)


def test_the_floor_is_reported_against_both_peers() -> None:
    assert floor_line(peer("floor", 0.1), peer("worker", 0.4), peer("naive", 0.2)) == (
        "intake floor (consume only): 1.00 CPU-ms per audio-s; 0.50x naive; 0.25x worker"
    )


def test_a_run_with_all_three_peers_renders_ratios_and_the_floor() -> None:
    results = [
        {
            "level": n,
            "peers": [
                peer("worker", 0.3 * n / 10, n, 40_000 + 100 * n),
                peer("naive", 0.2 * n / 10, n),
                peer("floor", 0.1, n),
            ],
        }
        for n in (10, 30)
    ]
    text = render(results, ARGS, 2)
    assert "1.50x" in text  # worker / naive CPU
    assert text.count("intake floor (consume only)") == 2
    assert memory_slope(results, "worker") == "100.0 KiB/session (10 → 30 open sessions)"


def test_a_worker_only_run_renders_without_the_other_peers() -> None:
    text = render([{"level": 10, "peers": [peer("worker", 0.3)]}], ARGS, 2)
    assert "intake floor" not in text and "memory slope, naive (RSS): -" in text


def test_a_profiled_run_splits_each_peers_cpu_by_component() -> None:
    worker, floor = peer("worker", 0.4), peer("floor", 0.1)
    worker["profile"] = {KAFKA: 0.25, PIPELINE: 0.75}
    floor["profile"] = {KAFKA: 1.0}
    lines = profile_lines([worker, peer("naive", 0.2), floor])  # the naive peer was not profiled
    assert lines[0].split() == ["profile:", "CPU-ms", "per", "audio-s", "(share)", "worker", "floor"]
    assert lines[1].split()[-4:] == ["1.00", "(25%)", "1.00", "(100%)"]  # Kafka client: 4 ms x 25%, 1 ms x 100%
    assert lines[2].split()[-4:] == ["3.00", "(75%)", "0.00", "(0%)"]
    assert len(lines) == 3


def test_an_unprofiled_run_has_no_profile_lines() -> None:
    assert profile_lines([peer("worker", 0.4)]) == []
