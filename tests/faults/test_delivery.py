"""Delivery guarantees under failure, with real Kafka, real worker processes and the tones emulator.

Every scenario streams sessions whose exact final transcripts are known (the tones codec), injects a
failure, and checks with a ``read_committed`` reader that every session's finals arrive exactly once
with the text of an undisturbed run. Each scenario appends its figures (trials, finals expected, lost,
duplicated, worst recovery time, peak RSS) to ``$STT_FAULT_REPORT`` (default
``.cache/fault-report.jsonl``). Set ``STT_SOAK=1`` for the long backlog variant (50 sessions of 10 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.audio import Encoding
from pipeline.emulator.engines.tones import synthesize
from pipeline.emulator.faults import Fault
from pipeline.kafka.topics import ensure_topics
from pipeline.schemas import validate
from pipeline.settings import Settings
from tests.support.config import worker_config
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.kafka import KafkaBroker
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
REPORT = Path(os.environ.get("STT_FAULT_REPORT", ROOT / ".cache" / "fault-report.jsonl"))
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike oscar papa".split()  # noqa: SIM905
FORMATS: list[tuple[Encoding, int]] = [("pcm_s16le", 16000), ("pcm_mulaw", 8000), ("pcm_f32le", 24000)]
SEEDS = [1, 2, 3]
SOAK = os.environ.get("STT_SOAK") == "1"


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:
        yield emu


# -- scenario plumbing -------------------------------------------------------------------------


@dataclass
class Plan:
    """Sessions with known scripts: what an undisturbed run transcribes."""

    sessions: dict[str, list[str]]  # session id → turn transcripts as published (leading spaces)
    audio: dict[str, tuple[bytes, Encoding, int]]

    @classmethod
    def make(
        cls,
        n: int,
        rng: random.Random,
        *,
        turns: tuple[int, int] = (2, 3),
        words: tuple[int, int] = (2, 4),
        tag: str = "",
    ) -> Plan:
        sessions: dict[str, list[str]] = {}
        audio: dict[str, tuple[bytes, Encoding, int]] = {}
        for i in range(n):
            session_id = f"s{i:02d}-{tag or uuid.uuid4().hex[:6]}"
            texts = [
                " ".join(rng.sample(WORDS, rng.randint(*words))).capitalize() + rng.choice(".?!")
                for _ in range(rng.randint(*turns))
            ]
            encoding, rate = FORMATS[i % len(FORMATS)]
            audio[session_id] = (synthesize(list(texts), rate, encoding, tail_ms=300), encoding, rate)
            sessions[session_id] = [t if k == 0 else " " + t for k, t in enumerate(texts)]
        return cls(sessions, audio)


async def stream(bootstrap: str, topic: str, plan: Plan, *, realtime: bool = True, chunk_ms: int = 100) -> None:
    """All sessions concurrently, each at realtime on an absolute clock (or as fast as possible), then `end`."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    try:
        schedule: list[tuple[float, str, int, bytes | None, Encoding, int]] = []
        for session_id, (pcm, encoding, rate) in plan.audio.items():
            size = rate * chunk_ms // 1000 * (1 if encoding == "pcm_mulaw" else 4 if encoding == "pcm_f32le" else 2)
            seq = 0
            for seq, start in enumerate(range(0, len(pcm), size)):
                schedule.append((seq * chunk_ms / 1000, session_id, seq, pcm[start : start + size], encoding, rate))
            schedule.append(((seq + 1) * chunk_ms / 1000, session_id, seq + 1, None, encoding, rate))
        schedule.sort(key=lambda item: item[0])
        t0 = time.monotonic()
        for due, session_id, seq, chunk, encoding, rate in schedule:
            if realtime:
                await asyncio.sleep(max(0.0, t0 + due - time.monotonic()))
            headers = (
                [("type", b"end"), ("seq", str(seq).encode())]
                if chunk is None
                else [
                    ("type", b"audio"),
                    ("seq", str(seq).encode()),
                    ("encoding", encoding.encode()),
                    ("sample_rate", str(rate).encode()),
                ]
            )
            await producer.send(topic, value=chunk or b"", key=session_id.encode(), headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


@dataclass
class Collector:
    """A read_committed reader of stt.transcripts that timestamps what it sees."""

    bootstrap: str
    topic: str
    records: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Collector:
        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
        )
        await consumer.start()

        async def run() -> None:
            try:
                while True:
                    batch = await consumer.getmany(timeout_ms=100)
                    for items in batch.values():
                        for item in items:
                            assert item.value is not None
                            self.records.append((time.monotonic(), orjson.loads(item.value)))
                            self._arrived.set()
            finally:
                await consumer.stop()

        self._task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def finals(self) -> list[dict[str, Any]]:
        return [r for _, r in self.records if r["kind"] == "session"]

    async def wait_sessions(self, n: int, limit_s: float) -> None:
        async with asyncio.timeout(limit_s):
            while len({r["session_id"] for r in self.finals()}) < n:
                await self._arrived.wait()
                self._arrived.clear()
        await asyncio.sleep(2.0)  # anything duplicated would show up now

    def first_output_after(self, moment: float) -> float | None:
        later = [t for t, _ in self.records if t > moment]
        return min(later) - moment if later else None


@dataclass
class Outcome:
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: list[str] = field(default_factory=list)


def check(plan: Plan, collector: Collector, *, may_fail: int = 0) -> Outcome:
    """Exactly once and verbatim: one session final and one final per turn, text as planned."""
    outcome = Outcome(expected=len(plan.sessions) + sum(len(t) for t in plan.sessions.values()))
    records = [r for _, r in collector.records]
    for record in records:
        validate("transcript", record)
    sessions = Counter(r["session_id"] for r in records if r["kind"] == "session")
    turns = Counter((r["session_id"], r["turn"]) for r in records if r["kind"] == "turn")
    failed = 0
    for session_id, expected_turns in plan.sessions.items():
        finals = [r for r in records if r["kind"] == "session" and r["session_id"] == session_id]
        if not finals:
            outcome.lost += 1 + len(expected_turns)
            continue
        outcome.duplicated += sessions[session_id] - 1
        final = finals[0]
        if final["status"] == "failed" and failed < may_fail:
            failed += 1
            continue
        got_turns = [r["transcript"] for r in records if r["kind"] == "turn" and r["session_id"] == session_id]
        outcome.duplicated += sum(c - 1 for (s, _), c in turns.items() if s == session_id)
        outcome.lost += max(0, len(expected_turns) - len({t for s, t in turns if s == session_id}))
        if final["status"] != "complete" or final["transcript"] != "".join(expected_turns):
            expected_text = "".join(expected_turns)
            outcome.wrong.append(f"{session_id}: {final['status']} {final['transcript']!r} != {expected_text!r}")
        elif got_turns != expected_turns:
            outcome.wrong.append(f"{session_id}: turns {got_turns!r} != {expected_turns!r}")
    return outcome


def report(scenario: str, **figures: Any) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as out:
        out.write(json.dumps({"scenario": scenario, "at": int(time.time()), **figures}) + "\n")


def make_config(bootstrap: str, emulator: EmulatorThread, **overrides: Any) -> Settings:
    defaults: dict[str, Any] = {
        # These scenarios test delivery, not the silence-fill policy (tested in test_worker.py): on two
        # shared cores a realtime test producer can stall past the 400 ms default during a rebalance,
        # and the worker would rightly treat that as a quiet speaker.
        "silence_budget_ms": 2000.0,
        "topic_partitions": 4,
        "commit_interval_ms": 150,
        "session_timeout_ms": 6000,
        "revoke_grace_s": 3.0,
        "drain_deadline_s": 30,
    }
    return worker_config(bootstrap, emulator.base_url, **{**defaults, **overrides})


@contextlib.asynccontextmanager
async def workers(
    config: Settings, tmp_path: Path, names: list[str], started: list[str] | None = None
) -> AsyncIterator[dict[str, WorkerProcess]]:
    """Worker processes (static members named ``names``); those in ``started`` (default all) run now."""
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    procs = {name: WorkerProcess(config, tmp_path / f"{name}.log", name) for name in names}
    for name in names if started is None else started:
        procs[name].start()
    sampler_stop = asyncio.Event()

    async def sample() -> None:
        while not sampler_stop.is_set():
            for proc in procs.values():
                proc.sample()
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    try:
        yield procs
    finally:
        sampler_stop.set()
        await sampler
        for proc in procs.values():
            if proc.alive:
                proc.terminate()


def overloads_since(emulator: EmulatorThread, before: int) -> int:
    return sum(s["overloaded"] for s in emulator.stats()["sessions"][before:])


def explain(outcome: Outcome, procs: dict[str, WorkerProcess]) -> str:
    logs = "\n".join(f"--- {name} ---\n{p.log_tail()}" for name, p in procs.items())
    return f"lost={outcome.lost} duplicated={outcome.duplicated} wrong={outcome.wrong[:5]}\n{logs}"


# -- 1. kill -9 and restart --------------------------------------------------------------------


async def test_kill_9_and_restart_loses_and_duplicates_no_final(
    kafka_bootstrap: str, emulator: EmulatorThread, tmp_path: Path
) -> None:
    totals = Outcome()
    worst_recovery = 0.0
    peak = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        config = make_config(kafka_bootstrap, emulator)
        await ensure_topics(config)
        plan = Plan.make(20, rng)
        before = len(emulator.stats()["sessions"])
        async with Collector(kafka_bootstrap, config.transcripts_topic) as collector, workers(
            config, tmp_path / f"kill-{seed}", ["w1"]
        ) as procs:
            producing = asyncio.create_task(stream(kafka_bootstrap, config.audio_topic, plan))
            await asyncio.sleep(rng.uniform(2.0, 6.0))
            killed_at = time.monotonic()
            procs["w1"].kill()
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            procs["w1"].start()
            await producing
            await collector.wait_sessions(len(plan.sessions), 120)
            outcome = check(plan, collector)
            recovery = collector.first_output_after(killed_at) or 0.0
        worst_recovery = max(worst_recovery, recovery)
        peak = max(peak, procs["w1"].peak_rss)
        assert outcome.lost == outcome.duplicated == 0 and not outcome.wrong, explain(outcome, procs)
        assert overloads_since(emulator, before) == 0
        totals.expected += outcome.expected
    report(
        "kill-9",
        trials=len(SEEDS),
        finals_expected=totals.expected,
        finals_lost=0,
        finals_duplicated=0,
        worst_recovery_s=round(worst_recovery, 2),
        peak_rss_mib=round(peak / 1024, 1),
    )


# -- 2. scale 1 → 3 → 2 ------------------------------------------------------------------------


async def test_scale_out_and_in_while_streaming(kafka_bootstrap: str, emulator: EmulatorThread, tmp_path: Path) -> None:
    totals = Outcome()
    worst_recovery = 0.0
    peak = 0
    for seed in SEEDS:
        rng = random.Random(100 + seed)
        config = make_config(kafka_bootstrap, emulator)
        await ensure_topics(config)
        plan = Plan.make(20, rng)
        before = len(emulator.stats()["sessions"])
        async with Collector(kafka_bootstrap, config.transcripts_topic) as collector, workers(
            config, tmp_path / f"scale-{seed}", ["w1", "w2", "w3"], started=["w1"]
        ) as procs:
            producing = asyncio.create_task(stream(kafka_bootstrap, config.audio_topic, plan))
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            procs["w2"].start()
            procs["w3"].start()
            await asyncio.sleep(rng.uniform(3.0, 5.0))
            stopped_at = time.monotonic()
            procs["w3"].terminate()
            await producing
            await collector.wait_sessions(len(plan.sessions), 120)
            outcome = check(plan, collector)
            worst_recovery = max(worst_recovery, collector.first_output_after(stopped_at) or 0.0)
        peak = max(peak, *(p.peak_rss for p in procs.values()))
        assert outcome.lost == outcome.duplicated == 0 and not outcome.wrong, explain(outcome, procs)
        assert overloads_since(emulator, before) == 0
        # partitions that stay with w1 across the rebalances keep their sessions and sockets
        assert re.search(r"rebalanced: kept \[\d", procs["w1"].log_path.read_text()), procs["w1"].log_tail()
        totals.expected += outcome.expected
    report(
        "scale 1-3-2",
        trials=len(SEEDS),
        finals_expected=totals.expected,
        finals_lost=0,
        finals_duplicated=0,
        worst_recovery_s=round(worst_recovery, 2),
        peak_rss_mib=round(peak / 1024, 1),
    )


# -- 3. SIGTERM hand-off -----------------------------------------------------------------------


async def test_sigterm_hands_off_within_the_deadline(
    kafka_bootstrap: str, emulator: EmulatorThread, tmp_path: Path
) -> None:
    totals = Outcome()
    worst_exit = worst_recovery = 0.0
    peak = 0
    for seed in SEEDS:
        rng = random.Random(200 + seed)
        config = make_config(kafka_bootstrap, emulator)
        deadline = config.revoke_grace_s + 15.0  # documented: grace for drains + the last transaction
        await ensure_topics(config)
        plan = Plan.make(16, rng)
        async with Collector(kafka_bootstrap, config.transcripts_topic) as collector, workers(
            config, tmp_path / f"term-{seed}", ["w1", "w2"]
        ) as procs:
            producing = asyncio.create_task(stream(kafka_bootstrap, config.audio_topic, plan))
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            stopped_at = time.monotonic()
            exit_s = await asyncio.to_thread(procs["w1"].terminate, deadline + 30)
            await producing
            await collector.wait_sessions(len(plan.sessions), 120)
            outcome = check(plan, collector)
            worst_recovery = max(worst_recovery, collector.first_output_after(stopped_at) or 0.0)
        worst_exit = max(worst_exit, exit_s)
        peak = max(peak, *(p.peak_rss for p in procs.values()))
        assert procs["w1"].exits[-1] == 0, procs["w1"].log_tail()
        assert exit_s <= deadline, f"SIGTERM took {exit_s:.1f} s (deadline {deadline:.0f} s)"
        assert outcome.lost == outcome.duplicated == 0 and not outcome.wrong, explain(outcome, procs)
        totals.expected += outcome.expected
    report(
        "SIGTERM",
        trials=len(SEEDS),
        finals_expected=totals.expected,
        finals_lost=0,
        finals_duplicated=0,
        worst_exit_s=round(worst_exit, 2),
        worst_recovery_s=round(worst_recovery, 2),
        peak_rss_mib=round(peak / 1024, 1),
    )


# -- 4. STT faults -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["drop", "5xx"])
async def test_stt_drop_or_5xx_reconnects_and_replays(
    kafka_bootstrap: str, emulator: EmulatorThread, tmp_path: Path, kind: str
) -> None:
    totals = Outcome()
    reconnects = 0
    for seed in SEEDS:
        rng = random.Random(300 + seed)
        config = make_config(kafka_bootstrap, emulator)
        await ensure_topics(config)
        # Every session has at least ~5.3 s of audio (3 turns of 3-4 words), and the first six
        # connections (all opened at the start) fail within 1.0-3.5 s: each fault is sure to fire.
        plan = Plan.make(10, rng, turns=(3, 3), words=(3, 4))
        for _ in range(6):
            at = rng.uniform(1000, 3500)
            fault = Fault("drop", at_audio_ms=at) if kind == "drop" else Fault("error", at_audio_ms=at, status_code=503)
            emulator.emulator.faults.add(fault)
        before = len(emulator.stats()["sessions"])
        async with Collector(kafka_bootstrap, config.transcripts_topic) as collector, workers(
            config, tmp_path / f"{kind}-{seed}", ["w1"]
        ) as procs:
            await stream(kafka_bootstrap, config.audio_topic, plan)
            await collector.wait_sessions(len(plan.sessions), 120)
            outcome = check(plan, collector)
        emulator.emulator.faults.clear()
        ours = emulator.stats()["sessions"][before:]
        faulted = sum(1 for s in ours if s["fault"])
        reconnects += faulted
        assert faulted == 6, "every injected fault must have hit a connection"
        assert outcome.lost == outcome.duplicated == 0 and not outcome.wrong, explain(outcome, procs)
        totals.expected += outcome.expected
    report(
        f"STT {kind}",
        trials=len(SEEDS),
        finals_expected=totals.expected,
        finals_lost=0,
        finals_duplicated=0,
        reconnects=reconnects,
    )


async def test_stt_4xx_fails_only_that_session(kafka_bootstrap: str, emulator: EmulatorThread, tmp_path: Path) -> None:
    rng = random.Random(400)
    config = make_config(kafka_bootstrap, emulator)
    await ensure_topics(config)
    plan = Plan.make(8, rng)
    emulator.emulator.faults.add(Fault("error", at_audio_ms=1200, status_code=400))
    async with Collector(kafka_bootstrap, config.transcripts_topic) as collector, workers(
        config, tmp_path / "4xx", ["w1"]
    ) as procs:
        await stream(kafka_bootstrap, config.audio_topic, plan)
        await collector.wait_sessions(len(plan.sessions), 120)
        outcome = check(plan, collector, may_fail=1)
    emulator.emulator.faults.clear()
    statuses = Counter(r["status"] for r in collector.finals())
    assert statuses == {"complete": 7, "failed": 1}
    assert outcome.lost == outcome.duplicated == 0 and not outcome.wrong, explain(outcome, procs)
    report("STT 4xx", trials=1, finals_expected=outcome.expected, finals_lost=0, finals_duplicated=0, failed=1)


# -- 5. broker restart -------------------------------------------------------------------------


async def test_broker_restart_mid_run(emulator: EmulatorThread, tmp_path: Path) -> None:
    totals = Outcome()
    peak = 0
    with KafkaBroker() as broker:
        for seed in SEEDS[:2]:
            rng = random.Random(500 + seed)
            # KNOWN DEFECT (see README "Known limits"): during a broker restart the worker cannot yet
            # tell an outage from a quiet producer reliably and may fill silence into a word. This
            # scenario tests delivery across the restart, so silence fill is off here.
            config = make_config(broker.bootstrap, emulator, silence_budget_ms=600_000.0)
            await ensure_topics(config)
            plan = Plan.make(12, rng)
            async with workers(config, tmp_path / f"broker-{seed}", ["w1"]) as procs:
                producing = asyncio.create_task(stream(broker.bootstrap, config.audio_topic, plan))
                await asyncio.sleep(rng.uniform(2.0, 4.0))
                await asyncio.to_thread(broker.restart)
                await producing
                async with Collector(broker.bootstrap, config.transcripts_topic) as collector:
                    await collector.wait_sessions(len(plan.sessions), 180)
                    outcome = check(plan, collector)
            peak = max(peak, procs["w1"].peak_rss)
            assert outcome.lost == outcome.duplicated == 0 and not outcome.wrong, explain(outcome, procs)
            totals.expected += outcome.expected
    report(
        "broker restart",
        trials=2,
        finals_expected=totals.expected,
        finals_lost=0,
        finals_duplicated=0,
        peak_rss_mib=round(peak / 1024, 1),
    )


# -- 6. backlog and backpressure ---------------------------------------------------------------


@pytest.mark.timeout(3600 if SOAK else 600)
async def test_backlog_is_paced_with_bounded_memory(
    kafka_bootstrap: str, emulator: EmulatorThread, tmp_path: Path
) -> None:
    soak = SOAK
    seconds = 600 if soak else 25
    rss_bound_mib = 400
    rng = random.Random(600)
    config = make_config(
        kafka_bootstrap, emulator, pause_high_bytes=2 * 2**20, pause_low_bytes=512 * 2**10, drain_deadline_s=60
    )
    await ensure_topics(config)
    texts = [" ".join(rng.sample(WORDS, 3)).capitalize() + "." for _ in range(max(2, seconds // 2))]  # ~2 s each
    sessions = {f"b{i:02d}": texts[i % 3 :] + texts[: i % 3] for i in range(50)}
    audio = {sid: synthesize(list(ts), 16000, "pcm_s16le", tail_ms=300) for sid, ts in sessions.items()}
    plan = Plan(
        {sid: [t if k == 0 else " " + t for k, t in enumerate(ts)] for sid, ts in sessions.items()},
        {sid: (pcm, "pcm_s16le", 16000) for sid, pcm in audio.items()},
    )
    audio_s = min(len(pcm) for pcm in audio.values()) / 32000
    await stream(kafka_bootstrap, config.audio_topic, plan, realtime=False)  # all of it is there first
    before = len(emulator.stats()["sessions"])
    async with Collector(kafka_bootstrap, config.transcripts_topic) as collector, workers(
        config, tmp_path / "backlog", ["w1"]
    ) as procs:
        await collector.wait_sessions(len(plan.sessions), audio_s * 3 + 120)
        outcome = check(plan, collector)
        procs["w1"].sample()
    log = procs["w1"].log_path.read_text()
    pauses, resumes = log.count("INFO pipeline.worker: paused p"), log.count("INFO pipeline.worker: resumed p")
    peak_mib = procs["w1"].peak_rss / 1024
    assert outcome.lost == outcome.duplicated == 0 and not outcome.wrong, explain(outcome, procs)
    assert pauses > 0 and resumes > 0, "the backlog must have paused and resumed partitions"
    assert overloads_since(emulator, before) == 0, "a backlog must be paced, not burst"
    assert peak_mib < rss_bound_mib, f"worker peak RSS {peak_mib:.0f} MiB"
    audio_mib = sum(len(a[0]) for a in plan.audio.values()) / 2**20
    report(
        "backlog" + (" (soak)" if soak else ""),
        trials=1,
        sessions=50,
        audio_s_per_session=round(audio_s, 1),
        backlog_audio_mib=round(audio_mib, 1),
        finals_expected=outcome.expected,
        finals_lost=0,
        finals_duplicated=0,
        pauses=pauses,
        peak_rss_mib=round(peak_mib, 1),
    )
