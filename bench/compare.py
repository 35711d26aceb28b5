"""One bench run: the worker, the naive bridge and the intake floor (with ``--c-floor``, also on
librdkafka), level by level, same broker, emulator and load.

``python -m bench.compare`` (``make bench``). For each level (concurrent sessions) and each peer:
fresh topics; start the peer (its own process) and wait until it consumes; start the load generator
(its own process); from its first record until every session's final transcript is visible to a
``read_committed`` reader (or a time limit), read the CPU of the peer, the emulator, the broker and
the load from /proc; then stop the peer and take its report. Ratios are worker / naive at the same
level in the same run: on a small shared machine only those compare.

After the given levels, ``--climb`` keeps raising the level (x1.5) while the worker still serves it
(every final exact, drift p99 ≤ 10 ms, no frame > 100 ms late, no emulator overload, load on time),
and says which process saturates where it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import procs
from bench import profile as profiling
from bench.report import render, served
from bench.scripts import SessionSpec, make_sessions
from bench.stats import Histogram, from_histogram, proc_cpu_s
from pipeline.audio import bytes_per_sample
from pipeline.emulator.engines.tones import synthesize
from tests.support.kafka import KafkaBroker

log = logging.getLogger("bench")

PEERS = {
    "worker": "bench.worker_peer",
    "naive": "bench.naive_bridge",
    "floor": "bench.floor_peer",
    "floor-c": "bench.floor_c_peer",
}
FLOORS = {"floor", "floor-c"}  # consume only: no STT, empty finals
# The broker is shared by every peer and must not be what differs between them: with C2 (the JVM's
# default) a fresh broker spends 25-55% of a core compiling for well over a minute of load, on a box
# where every core is measured. C1 alone compiles in seconds and then stays out of the way.
BROKER_JVM_OPTS = "-XX:TieredStopAtLevel=1"


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


class Finals:
    """Reads ``kind=session`` transcripts (read_committed) as they become visible, with their arrival time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.seen: dict[str, tuple[float, dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
        )
        await consumer.start()
        try:
            while True:
                for items in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.time()
                    for item in items:
                        record = orjson.loads(item.value) if item.value else {}
                        if record.get("kind") == "session":
                            self.seen.setdefault(record["session_id"], (now, record))
        finally:
            await consumer.stop()

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def audio_seconds(sessions: Sequence[SessionSpec], encoding: str, rate: int) -> float:
    per_s = rate * bytes_per_sample(encoding)  # type: ignore[arg-type]
    return sum(len(synthesize(s.script, rate, encoding)) / per_s for s in sessions)  # type: ignore[arg-type]


def peer_spec(
    kind: str, args: argparse.Namespace, bootstrap: str, base_url: str, tag: str, level: int
) -> dict[str, Any]:
    topics = {t: f"bench-{t}-{tag}" for t in ("audio", "turns", "transcripts", "sessions", "dead")}
    if kind == "naive":
        return {
            "bootstrap": bootstrap,
            "base_url": base_url,
            "api_key": "bench",
            "audio_topic": topics["audio"],
            "turns_topic": topics["turns"],
            "transcripts_topic": topics["transcripts"],
            "group_id": f"bench-{tag}",
        }
    return {
        "settings": {
            "bootstrap_servers": bootstrap,
            "stt_base_url": base_url,
            "api_key": "bench",
            "audio_topic": topics["audio"],
            "turns_topic": topics["turns"],
            "transcripts_topic": topics["transcripts"],
            "sessions_topic": topics["sessions"],
            "dead_letter_topic": topics["dead"],
            "group_id": f"bench-{tag}",
            "topic_partitions": args.partitions,
            "max_sessions": max(500, level + 10),
            "uvloop": not args.no_uvloop,
            "eager_sends": not args.no_eager,
            "log_level": "WARNING",
            **dict(item.split("=", 1) for item in args.set),
        }
    }


async def run_peer(
    kind: str, args: argparse.Namespace, level: int, sessions: list[SessionSpec], env: dict[str, Any]
) -> dict[str, Any]:
    tag = f"{kind}-{level}-{uuid.uuid4().hex[:6]}"
    renamed = [SessionSpec(f"{s.session_id}-{tag}", s.script) for s in sessions]
    bootstrap, base_url, workdir = env["bootstrap"], env["base_url"], env["workdir"]
    spec = peer_spec(kind, args, bootstrap, base_url, tag, level)
    audio_topic, transcripts = f"bench-audio-{tag}", f"bench-transcripts-{tag}"
    await create_topics(bootstrap, [audio_topic, transcripts, f"bench-turns-{tag}"], args.partitions)
    module = PEERS[kind]
    peer = procs.Child(module, spec, workdir, f"{tag}-peer")
    loads = [
        procs.Child(
            "bench.load",
            {
                "bootstrap": bootstrap,
                "topic": audio_topic,
                "encoding": args.encoding,
                "sample_rate": args.sample_rate,
                "chunk_ms": args.chunk_ms,
                "stagger_ms": args.stagger_ms,
                "sessions": [{"session_id": s.session_id, "script": s.script} for s in renamed[i :: args.loaders]],
            },
            workdir,
            f"{tag}-load{i}",
        )
        for i in range(min(args.loaders, level))
    ]
    finals = Finals(bootstrap, transcripts)
    profiled: dict[str, float] = {}
    emulator_before = len(procs.http_json(f"{base_url}/_emulator/stats")["sessions"])
    pids = {"peer": None, "emulator": env["emulator_pid"], "kafka": env["kafka_pid"]}
    try:
        await peer.start()
        await peer.expect("ready", 120)
        pids["peer"] = peer.pid
        spy = await profile(args, peer.pid if kind != "floor-c" else None, profile_path(args, tag))
        finals.start()
        for load in loads:
            await load.start()
        for load in loads:
            await load.expect("started", 120)
        cpu0 = {k: proc_cpu_s(p) for k, p in pids.items()}
        t0 = time.monotonic()
        limit = t0 + args.seconds + args.stagger_ms * level / 1000 + 60
        wanted = {s.session_id for s in renamed}
        while not wanted <= finals.seen.keys() and time.monotonic() < limit:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        wall = time.monotonic() - t0
        cpu1 = {k: proc_cpu_s(p) for k, p in pids.items()}
        load_reports = [await load.report(120) for load in loads]
        report = await peer.stop_and_report()
        if spy is not None:
            await spy.wait()
            profiled = profiling.read(profile_path(args, tag))
    finally:
        await finals.stop()
        for child in (peer, *loads):
            await child.close()
    emu = procs.http_json(f"{base_url}/_emulator/stats")["sessions"][emulator_before:]
    cpu = {k: (None if cpu1[k] is None or cpu0[k] is None else cpu1[k] - cpu0[k]) for k in pids}
    cpu["load"] = sum(r["cpu_s"] for r in load_reports)  # its own process time from the first send
    end_at = {sid: at for r in load_reports for sid, at in r["end_at"].items()}
    end_to_final = [(finals.seen[s][0] - end_at[s]) * 1000 for s in wanted if s in finals.seen and s in end_at]
    got = {s.session_id: finals.seen[s.session_id][1] if s.session_id in finals.seen else {} for s in renamed}
    mismatches = [
        {"session_id": s.session_id, "status": got[s.session_id].get("status"), "expected": s.text,
         "got": got[s.session_id].get("transcript")}
        for s in renamed
        if got[s.session_id].get("status") != "complete" or got[s.session_id].get("transcript") != s.text
    ]  # fmt: skip
    return {
        "peer": kind,
        "sessions": level,
        "audio_s": env["audio_s"],
        "wall_s": wall,
        "cpu_s": cpu,
        "finals": len(wanted & finals.seen.keys()),
        "exact": level - len(mismatches),
        "mismatches": mismatches,
        "end_to_final_ms": end_to_final,
        "late_ms_p99": max((r["late_ms_p99"] or 0 for r in load_reports), default=None),
        "emulator": {
            "sessions": len(emu),
            "overloads": sum(bool(s["overloaded"]) for s in emu),
            "errors": sum(len(s["errors"]) for s in emu),
        },
        "report": normalise(kind, report),
        "profile": profiled,
    }


def profile_path(args: argparse.Namespace, tag: str) -> Path:
    return Path(args.profile or ".") / f"{tag}.txt"


async def profile(args: argparse.Namespace, pid: int | None, path: Path) -> asyncio.subprocess.Process | None:
    """``--profile DIR``: py-spy samples the peer for the length of the sessions (raw folded stacks),
    summed by component in the report (:mod:`bench.profile`). Not the librdkafka floor: py-spy sees
    Python threads only, and that peer's Kafka work runs in librdkafka's native threads."""
    if not args.profile or pid is None:
        return None
    os.makedirs(args.profile, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"),
        "record", "-r", "100", "-f", "raw", "-d", str(int(args.seconds)), "-p", str(pid),
        "-o", str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def normalise(kind: str, report: dict[str, Any]) -> dict[str, Any]:
    """The peers' reports in the same terms (ms quantiles)."""
    if kind in FLOORS:
        return {"memory": report["memory"], "records": report["records"], "ended": report["ended"]}
    if kind == "naive":
        return {
            "drift_ms": report["drift_ms"],
            "late_100ms": report["drift_above_100ms"],
            "ack_ms": report["event_to_ack_ms"],
            "commit_ms": report["event_to_ack_ms"],  # not transactional: visible to every reader once acked
            "memory": report["memory"],
            "silence_fill_s": 0.0,  # it never fills silence
        }
    h = {k: Histogram.from_dict(v) for k, v in report["histograms"].items()}
    return {
        "drift_ms": from_histogram(h["drift_s"], 1000.0, first_lower=-0.3),
        "late_100ms": h["drift_s"].share_above(0.1),
        "ack_ms": from_histogram(h["event_to_ack_s"], 1000.0, first_lower=0.0),
        "commit_ms": from_histogram(h["event_to_commit_s"], 1000.0, first_lower=0.0),
        "transaction_ms": from_histogram(h["transaction_s"], 1000.0, first_lower=0.0),
        "gc_pause_ms": from_histogram(h["gc_pause_s"], 1000.0, first_lower=0.0),
        "gc_pauses_over_50ms": h["gc_pause_s"].count - h["gc_pause_s"].counts[h["gc_pause_s"].bounds.index(0.05)],
        "memory": report["memory"],
        "counters": report["counters"],
        "silence_fill_s": report["silence_fill_s"],
    }


async def warm_up(args: argparse.Namespace, env: dict[str, Any]) -> None:
    """Run the worker (and the naive bridge, if it runs) once at ``--warmup-level`` for ``--warmup-s``,
    unmeasured: a fresh broker compiles its hot paths and loads its classes under the first load it
    sees (measured cold, with C2, the broker took ~90% of a core during the worker's first level and
    ~35% during the naive bridge's right after), and the emulator and the topics' first use settle."""
    if args.warmup_s <= 0 or args.warmup_level <= 0:
        return
    quick = argparse.Namespace(**{**vars(args), "seconds": args.warmup_s, "profile": None})
    sessions = make_sessions(args.warmup_level, args.warmup_s, args.seed + 1, "w")
    env["audio_s"] = audio_seconds(sessions, args.encoding, args.sample_rate)
    for kind in [k for k in peer_kinds(args) if k in ("worker", "naive")]:
        print(f"warm-up ({args.warmup_level} sessions, {args.warmup_s:g} s): {kind} ...", file=sys.stderr)
        await run_peer(kind, quick, args.warmup_level, sessions, env)


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="stt-bench-"))
    broker = KafkaBroker(jvm_opts=args.broker_jvm_opts).start()
    results: list[dict[str, Any]] = []
    try:
        print(f"kafka at {broker.bootstrap}", file=sys.stderr)
        with procs.emulator(workdir) as (base_url, emulator):
            env: dict[str, Any] = {
                "bootstrap": broker.bootstrap,
                "base_url": base_url,
                "workdir": workdir,
                "emulator_pid": emulator.pid,
                "kafka_pid": procs.broker_pid(broker),
            }
            await warm_up(args, env)
            queue = list(levels)
            while queue:
                level = queue.pop(0)
                sessions = make_sessions(level, args.seconds, args.seed, "s")
                env["audio_s"] = audio_seconds(sessions, args.encoding, args.sample_rate)
                peers = []
                kinds = peer_kinds(args)
                for kind in kinds:
                    print(f"level {level}: {kind} ...", file=sys.stderr)
                    peers.append(await run_peer(kind, args, level, sessions, env))
                results.append({"level": level, "peers": peers})
                if args.climb and not queue and served(peers[0]) and level < args.max_level:
                    queue.append(min(args.max_level, round(level * 1.5 / 50) * 50))
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def peer_kinds(args: argparse.Namespace) -> list[str]:
    """The peers a level runs, the worker first."""
    kinds = ["worker"]
    if not args.worker_only:
        kinds += ["naive"] + ([] if args.no_floor else ["floor"])
    return kinds + (["floor-c"] if args.c_floor else [])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--levels", default="50,150,300", help="concurrent sessions, comma-separated")
    parser.add_argument("--climb", action="store_true", help="then raise the level while the worker serves it")
    parser.add_argument("--max-level", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session (default 20)")
    parser.add_argument("--encoding", default="pcm_s16le")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--stagger-ms", type=float, default=10.0, help="between session starts (default 10)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--warmup-s", type=float, default=10.0, help="unmeasured warm-up run's audio per session (0: none)"
    )
    parser.add_argument(
        "--broker-jvm-opts",
        default=BROKER_JVM_OPTS,
        help=f"the bench broker's JVM flags (default {BROKER_JVM_OPTS!r}; '' for the JVM's defaults)",
    )
    parser.add_argument("--warmup-level", type=int, default=100, help="warm-up run's sessions (default 100)")
    parser.add_argument("--loaders", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker-only", action="store_true", help="skip the naive bridge")
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the intake floor peer (consume only, bench/floor_peer.py)"
    )
    parser.add_argument(
        "--c-floor", action="store_true", help="also the intake floor on librdkafka (bench/floor_c_peer.py)"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="worker on the standard asyncio loop")
    parser.add_argument("--no-eager", action="store_true", help="worker sends outputs at commit time only")
    parser.add_argument(
        "--set",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="a worker setting for this run, by its Settings field name (repeatable), e.g. frame_ms=200",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy each peer during its level (needs py-spy)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(bench(args))
    print(render(results, args, os.cpu_count() or 0))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
