"""The side-by-side table of a run: per level, worker | naive | worker/naive, the intake floor; memory slope;
saturation."""

from __future__ import annotations

import argparse
import math
from typing import Any

from bench.profile import COMPONENTS
from bench.stats import exact

DRIFT_P99_MS = 10.0  # pacing target at the highest level served
SATURATED = 0.85  # share of one core above which a (single-threaded) process counts as saturated


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "overflow"
    return f"{value:.{digits}f}{suffix}"


def cpu_ms_per_audio_s(r: dict[str, Any]) -> float | None:
    cpu = r["cpu_s"]["peer"]
    return None if cpu is None else cpu / r["audio_s"] * 1000


def served(r: dict[str, Any]) -> bool:
    """Whether the worker served the level: all finals exact, pacing on time, emulator and load not overloaded."""
    drift = r["report"]["drift_ms"]["p99"]
    return (
        r["exact"] == r["sessions"]
        and drift is not None
        and drift <= DRIFT_P99_MS
        and r["report"]["late_100ms"] == 0
        and r["emulator"]["overloads"] == 0
        and r["emulator"]["errors"] == 0
        and (r["late_ms_p99"] or 0) < 50
    )


def saturation(r: dict[str, Any]) -> str:
    shares = {k: (v or 0) / r["wall_s"] for k, v in r["cpu_s"].items()}
    hot = [f"{k} {s * 100:.0f}%" for k, s in sorted(shares.items(), key=lambda kv: -kv[1]) if s >= SATURATED]
    total = sum(shares.values())
    return f"box {total * 100:.0f}% of 200%; " + (("saturated: " + ", ".join(hot)) if hot else "no process saturated")


def pair(q: dict[str, Any], digits: int = 0) -> str:
    return f"{fmt(q.get('p50'), digits)} / {fmt(q.get('p99'), digits)}"


def level_rows(w: dict[str, Any], n: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    def both(get: Any, ratio: bool = False, digits: int = 2) -> tuple[str, str, str]:
        a, b = get(w), get(n) if n else None
        r = fmt(a / b, 2, "x") if ratio and a is not None and b else ""
        return fmt(a, digits), fmt(b, digits), r

    def text(get: Any) -> tuple[str, str, str]:
        return get(w), get(n) if n else "-", ""

    return [
        ("CPU-ms per audio-s", *both(cpu_ms_per_audio_s, ratio=True)),
        ("peer share of one core", *text(lambda r: fmt(r["cpu_s"]["peer"] / r["wall_s"] * 100, 0, "%"))),
        ("send drift p50 / p99 (ms)", *text(lambda r: pair(r["report"]["drift_ms"]))),
        ("frames > 100 ms late", *text(lambda r: fmt(r["report"]["late_100ms"] * 100, 2, "%"))),
        ("event → acked p50 / p99 (ms): read_uncommitted", *text(lambda r: pair(r["report"]["ack_ms"], 1))),
        ("event → committed p50 / p99 (ms): read_committed", *text(lambda r: pair(r["report"]["commit_ms"], 1))),
        ("partition commit p50 / p99 (ms)", *text(lambda r: pair(r["report"].get("transaction_ms", {}), 1))),
        ("GC pause p99 (ms) / pauses > 50 ms", *text(gc_pauses)),
        ("end → final visible p50 / p99 (ms)", *text(lambda r: pair(exact(r["end_to_final_ms"])))),
        ("finals exact", *text(lambda r: f"{r['exact']}/{r['sessions']}")),
        ("silence fill sent (s)", *text(lambda r: fmt(r["report"].get("silence_fill_s"), 1))),
        ("emulator overloads / errors", *text(lambda r: f"{r['emulator']['overloads']} / {r['emulator']['errors']}")),
        ("load send lateness p99 (ms)", *text(lambda r: fmt(r["late_ms_p99"], 1))),
        ("peak RSS (MiB)", *both(lambda r: r["report"]["memory"]["peak_kib"] / 1024, digits=0)),
        (
            "CPU share: emulator / kafka / load",
            *text(
                lambda r: " / ".join(
                    fmt((r["cpu_s"][k] or 0) / r["wall_s"] * 100, 0, "%") for k in ("emulator", "kafka", "load")
                )
            ),
        ),
    ]


def gc_pauses(r: dict[str, Any]) -> str:
    """The worker's ``stt_gc_pause_seconds``: the whole process stops for each one."""
    report = r["report"]
    if "gc_pause_ms" not in report:
        return "-"
    return f"{fmt(report['gc_pause_ms'].get('p99'), 1)} / {report['gc_pauses_over_50ms']:.0f}"


def peer_of(result: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((p for p in result["peers"] if p["peer"] == kind), None)


FLOOR_LABELS = {"floor": "intake floor (consume only)", "floor-c": "intake floor on librdkafka (consume only)"}


def floor_line(f: dict[str, Any], w: dict[str, Any], n: dict[str, Any] | None) -> str:
    """An intake floor (consume only) against the naive bridge and the worker."""
    floor, worker = cpu_ms_per_audio_s(f), cpu_ms_per_audio_s(w)
    naive = cpu_ms_per_audio_s(n) if n else None
    parts = [f"{FLOOR_LABELS[f['peer']]}: {fmt(floor, 2)} CPU-ms per audio-s"]
    if floor is not None and naive:
        parts.append(f"{floor / naive:.2f}x naive")
    if floor is not None and worker:
        parts.append(f"{floor / worker:.2f}x worker")
    return "; ".join(parts)


def profile_lines(peers: list[dict[str, Any]]) -> list[str]:
    """``--profile``: each peer's CPU per audio-second split by component (py-spy shares times the
    peer's figure), so the floor a component sets is read in the same unit as the table."""
    profiled = [(p["peer"], p.get("profile") or {}, cpu_ms_per_audio_s(p)) for p in peers]
    profiled = [(kind, shares, cpu) for kind, shares, cpu in profiled if shares and cpu is not None]
    if not profiled:
        return []
    rows: list[tuple[str, ...]] = [("profile: CPU-ms per audio-s (share)", *(kind for kind, _, _ in profiled))]
    for name in COMPONENTS:
        if any(name in shares for _, shares, _ in profiled):
            rows.append(
                (
                    name,
                    *(
                        f"{shares.get(name, 0) * cpu:.2f} ({shares.get(name, 0) * 100:.0f}%)"
                        for _, shares, cpu in profiled
                    ),
                )
            )
    return columns(rows)


def columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        for row in rows
    ]


def memory_slope(results: list[dict[str, Any]], kind: str) -> str:
    """KiB of RSS per open session beyond its buffered audio, between the smallest and the largest level
    (each taken when the most sessions were open)."""
    points = [
        (m["peak_sessions"], m["rss_at_peak_sessions_kib"] - m["buffered_at_peak_sessions_kib"])
        for r in results
        for p in [peer_of(r, kind)]
        if p is not None
        for m in [p["report"]["memory"]]
    ]
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return "-"
    (s0, m0), (s1, m1) = points[0], points[-1]
    return f"{(m1 - m0) / (s1 - s0):.1f} KiB/session ({s0} → {s1} open sessions)"


def render(results: list[dict[str, Any]], args: argparse.Namespace, cpus: int) -> str:
    lines = [
        f"bench: {args.seconds:g} s of {args.encoding}/{args.sample_rate} Hz per session, {args.chunk_ms:g} ms chunks, "
        f"{args.partitions} partitions, {cpus} CPUs (shared: figures are noisy; compare the ratios)",
        "",
    ]
    for result in results:
        w = result["peers"][0]
        n = peer_of(result, "naive")
        rows: list[tuple[str, ...]] = [("metric", "worker", "naive", "worker/naive"), *level_rows(w, n)]
        lines.append(f"== {result['level']} concurrent sessions ({w['audio_s']:.0f} audio-s) ==")
        lines.extend(columns(rows))
        lines.append(f"worker: {'served' if served(w) else 'NOT served'}; {saturation(w)}")
        for peer in (w, n):
            for m in [] if peer is None else peer["mismatches"][:3]:
                lines.append(f"  {peer['peer']} {m['session_id']}: expected {m['expected']!r}, got {m['got']!r}")
        if n is not None:
            lines.append(f"naive:  {saturation(n)}")
        for kind in FLOOR_LABELS:
            f = peer_of(result, kind)
            if f is not None:
                lines.append(floor_line(f, w, n))
        lines.extend(profile_lines(result["peers"]))
        lines.append("")
    lines.append(f"memory slope, worker (RSS beyond buffered audio): {memory_slope(results, 'worker')}")
    lines.append(f"memory slope, naive (RSS): {memory_slope(results, 'naive')}")
    top = [r for r in results if served(r["peers"][0])]
    if top:
        lines.append(f"highest level the worker served: {top[-1]['level']}")
    unserved = [r for r in results if not served(r["peers"][0])]
    if unserved:
        lines.append(f"first level not served: {unserved[0]['level']} ({saturation(unserved[0]['peers'][0])})")
    return "\n".join(lines)
