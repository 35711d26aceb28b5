"""Delivery guarantees under failure, with real Kafka, real worker processes and the tones emulator.

Each scenario is one row of :data:`SCENARIOS`, run by one runner (:func:`test_delivery_under_fault`):
start the workers, stream sessions whose exact final transcripts are known (the tones codec), inject the
scenario's failure, collect ``stt.transcripts`` with a ``read_committed`` reader and check that every
session's finals arrive exactly once with the text of an undisturbed run; then the scenario's own checks.
Each scenario appends its figures (trials, finals expected, lost, duplicated, worst recovery time, peak
RSS, wall time, and its own) to ``$STT_FAULT_REPORT`` (default ``.cache/fault-report.jsonl``), with
``passed`` false if it failed. Set ``STT_SOAK=1`` for the long backlog variant (50 sessions of 10 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.emulator.faults import Fault
from pipeline.kafka.topics import ensure_topics
from pipeline.schemas import validate
from pipeline.settings import Settings
from tests.support.config import worker_config
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.kafka import KafkaBroker
from tests.support.scripts import WORDS, Collector, Plan, read_topic, stream
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
REPORT = Path(os.environ.get("STT_FAULT_REPORT", ROOT / ".cache" / "fault-report.jsonl"))
SOAK = os.environ.get("STT_SOAK") == "1"

# Worker settings of every scenario (a scenario's `settings` override them).
DELIVERY_SETTINGS: dict[str, Any] = {
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
# A producer gap tolerated for longer than any scenario runs: the worker never fills silence.
SILENCE_FILL_OFF_MS = 600_000.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:
        yield emu


# -- the scenario table's vocabulary ------------------------------------------------------------


@dataclass
class Figures:
    """One scenario's figures for the report, over all its trials."""

    trials: int = 0
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    peak_rss_kib: int = 0
    own: dict[str, float] = field(default_factory=dict)

    def worst(self, name: str, value: float) -> None:
        self.own[name] = max(self.own.get(name, value), value)

    def add(self, name: str, value: float) -> None:
        self.own[name] = self.own.get(name, 0) + value

    def set(self, **values: float) -> None:
        self.own.update(values)

    def as_report(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "finals_expected": self.expected,
            "finals_lost": self.lost,
            "finals_duplicated": self.duplicated,
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in self.own.items()},
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
        }


@dataclass
class Context:
    """What a scenario's fault and checks see of one trial."""

    scenario: Scenario
    rng: random.Random  # the trial's seed: the plan, then the fault's timing
    config: Settings
    plan: Plan
    emulator: EmulatorThread
    broker: KafkaBroker
    figures: Figures
    procs: dict[str, WorkerProcess] = field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # /status of the live workers at the end
    collector: Collector | None = None
    emulator_before: int = 0  # STT connections opened before this trial
    fault_at: float | None = None  # when the failure hit (recovery is measured from it)
    measured: dict[str, float] = field(default_factory=dict)  # what the fault measured, for the checks

    def mark_fault(self) -> None:
        self.fault_at = time.monotonic()

    def stt_sessions(self) -> list[dict[str, Any]]:
        """The emulator's stats of this trial's STT connections."""
        sessions: list[dict[str, Any]] = self.emulator.stats()["sessions"][self.emulator_before :]
        return sessions

    def finals(self) -> list[dict[str, Any]]:
        assert self.collector is not None
        return [r for _, r in self.collector.records]


Inject = Callable[[Context], Awaitable[None]]
Check = Callable[[Context], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """One row of the table: a failure, the load it hits and what must hold besides exactly-once finals."""

    name: str  # as in the fault report
    sessions: int
    inject: Inject  # runs once the workers are up and the sessions are streaming
    seeds: tuple[int, ...]  # one trial per seed
    turns: tuple[int, int] = (2, 3)  # per session (see Plan.make)
    words: tuple[int, int] = (2, 4)  # per turn
    plan: Callable[[Scenario, random.Random], Plan] | None = None  # instead of Plan.make
    settings: Mapping[str, Any] = field(default_factory=dict)  # worker settings over DELIVERY_SETTINGS
    silence_fill: bool = True  # False: the worker never fills producer gaps with silence
    workers: tuple[str, ...] = ("w1",)  # static members
    started: tuple[str, ...] | None = None  # those running from the start (default all)
    backlog: bool = False  # the whole plan is in the topic (fast) before the workers start
    own_broker: bool = False  # a broker of its own, which the fault may restart
    read_after_fault: bool = False  # the reader starts once the fault is over and the sessions are sent
    paced: bool = False  # no STT connection may have seen audio faster than realtime
    may_fail: int = 0  # sessions allowed to end `failed` (their text is not checked)
    collect_s: float = 120.0  # how long all finals may take ...
    collect_per_audio_s: float = 0.0  # ... plus this many times the shortest session's audio
    checks: tuple[Check, ...] = ()
    timeout_s: float = 600.0

    @property
    def id(self) -> str:
        return re.sub(r"\W+", "-", self.name.lower()).strip("-")

    def make_plan(self, rng: random.Random) -> Plan:
        if self.plan is not None:
            return self.plan(self, rng)
        return Plan.make(self.sessions, rng, turns=self.turns, words=self.words)


# -- the runner ----------------------------------------------------------------------------------


def make_config(bootstrap: str, emulator: EmulatorThread, scenario: Scenario) -> Settings:
    """The one place the suite builds a worker configuration."""
    settings = {**DELIVERY_SETTINGS, **scenario.settings}
    if not scenario.silence_fill:
        settings["silence_budget_ms"] = SILENCE_FILL_OFF_MS
    return worker_config(bootstrap, emulator.base_url, **settings)


@contextlib.asynccontextmanager
async def workers(
    config: Settings, tmp_path: Path, names: tuple[str, ...], started: tuple[str, ...] | None = None
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
    stuck: list[str] = []
    try:
        yield procs
    finally:
        sampler_stop.set()
        await sampler
        for name, proc in procs.items():  # every one of them, even when one does not exit on SIGTERM
            if proc.alive:
                try:
                    proc.terminate()
                except subprocess.TimeoutExpired:
                    stuck.append(name)
                    proc.kill()
    assert not stuck, f"worker(s) {stuck} did not exit on SIGTERM (killed)"


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


def explain(outcome: Outcome, procs: dict[str, WorkerProcess]) -> str:
    logs = "\n".join(f"--- {name} ---\n{p.log_tail()}" for name, p in procs.items())
    return f"lost={outcome.lost} duplicated={outcome.duplicated} wrong={outcome.wrong[:5]}\n{logs}"


def report(scenario: str, **figures: Any) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as out:
        out.write(json.dumps({"scenario": scenario, "at": int(time.time()), **figures}) + "\n")


async def run_trial(
    scenario: Scenario, seed: int, broker: KafkaBroker, emulator: EmulatorThread, logs: Path, figures: Figures
) -> None:
    rng = random.Random(seed)
    config = make_config(broker.bootstrap, emulator, scenario)
    await ensure_topics(config)
    plan = scenario.make_plan(rng)
    ctx = Context(scenario, rng, config, plan, emulator, broker, figures)
    if scenario.backlog:
        await stream(broker.bootstrap, config.audio_topic, plan, realtime=False)
    ctx.emulator_before = len(emulator.stats()["sessions"])
    try:
        async with contextlib.AsyncExitStack() as stack:
            if not scenario.read_after_fault:
                ctx.collector = await stack.enter_async_context(Collector(broker.bootstrap, config.transcripts_topic))
            ctx.procs = await stack.enter_async_context(workers(config, logs, scenario.workers, scenario.started))
            producing = (
                None if scenario.backlog else asyncio.create_task(stream(broker.bootstrap, config.audio_topic, plan))
            )
            try:
                await scenario.inject(ctx)
                if producing is not None:
                    await producing
            finally:
                if producing is not None and not producing.done():
                    producing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await producing
            if ctx.collector is None:
                ctx.collector = await stack.enter_async_context(Collector(broker.bootstrap, config.transcripts_topic))
            limit_s = scenario.collect_s + scenario.collect_per_audio_s * plan.shortest_audio_s()
            await ctx.collector.wait_sessions(len(plan.sessions), limit_s)
            outcome = check(plan, ctx.collector, may_fail=scenario.may_fail)
            ctx.statuses = {name: proc.status() for name, proc in ctx.procs.items() if proc.alive}
    finally:
        emulator.emulator.faults.clear()
    figures.trials += 1
    figures.expected += outcome.expected
    figures.lost += outcome.lost
    figures.duplicated += outcome.duplicated
    figures.peak_rss_kib = max(figures.peak_rss_kib, *(p.peak_rss for p in ctx.procs.values()))
    if ctx.fault_at is not None:
        figures.worst("worst_recovery_s", ctx.collector.first_output_after(ctx.fault_at) or 0.0)
    assert outcome.lost == outcome.duplicated == 0 and not outcome.wrong, explain(outcome, ctx.procs)
    if scenario.paced:
        overloads = sum(s["overloaded"] for s in ctx.stt_sessions())
        assert overloads == 0, f"{overloads} STT connection(s) got audio faster than realtime"
    for extra in scenario.checks:
        await extra(ctx)


@contextlib.contextmanager
def scenario_broker(scenario: Scenario, shared: KafkaBroker) -> Iterator[KafkaBroker]:
    if not scenario.own_broker:
        yield shared
        return
    with KafkaBroker() as broker:
        yield broker


# -- faults ----------------------------------------------------------------------------------------


async def kill_9_and_restart(ctx: Context) -> None:
    await asyncio.sleep(ctx.rng.uniform(2.0, 6.0))
    ctx.mark_fault()
    ctx.procs["w1"].kill()
    await asyncio.sleep(ctx.rng.uniform(0.2, 1.5))
    ctx.procs["w1"].start()


async def scale_1_3_2(ctx: Context) -> None:
    await asyncio.sleep(ctx.rng.uniform(1.0, 3.0))
    ctx.procs["w2"].start()
    ctx.procs["w3"].start()
    await asyncio.sleep(ctx.rng.uniform(3.0, 5.0))
    ctx.mark_fault()
    await asyncio.to_thread(ctx.procs["w3"].terminate)
    ctx.measured["handover_s"] = await _all_partitions_flowing(ctx, ("w1", "w2"))
    ctx.figures.worst("worst_handover_s", ctx.measured["handover_s"])


async def _all_partitions_flowing(ctx: Context, names: tuple[str, ...], limit_s: float = 60.0) -> float:
    """Seconds from the fault until every partition is owned, and not revoking, by one of ``names``."""
    assert ctx.fault_at is not None
    wanted = set(range(ctx.config.topic_partitions))
    while time.monotonic() - ctx.fault_at < limit_s:
        owned: set[int] = set()
        for name in names:
            status = await asyncio.to_thread(ctx.procs[name].status)
            owned |= {p["partition"] for p in status["partitions"] if p["state"] not in ("revoking", "released")}
        if owned == wanted:
            return time.monotonic() - ctx.fault_at
        await asyncio.sleep(0.1)
    raise AssertionError(f"partitions not all owned {limit_s:.0f} s after the scale-in")


async def sigterm_w1(ctx: Context) -> None:
    deadline = ctx.config.revoke_grace_s + 15.0  # documented: grace for drains + the last transaction
    await asyncio.sleep(ctx.rng.uniform(2.0, 5.0))
    ctx.mark_fault()
    exit_s = await asyncio.to_thread(ctx.procs["w1"].terminate, deadline + 30)
    ctx.measured.update(exit_s=exit_s, deadline_s=deadline)
    ctx.figures.worst("worst_exit_s", exit_s)


def stt_faults(kind: str) -> Inject:
    """Six STT connections dropped (``drop``) or failed with a 503 (``5xx``) at 1.0-3.5 s of audio."""

    async def inject(ctx: Context) -> None:
        # Every session has at least ~5 s of audio (3 turns of 3-4 words), and the first six
        # connections (all opened at the start) fail within 1.0-3.5 s: each fault is sure to fire.
        for _ in range(6):
            at = ctx.rng.uniform(1000, 3500)
            fault = Fault("drop", at_audio_ms=at) if kind == "drop" else Fault("error", at_audio_ms=at, status_code=503)
            ctx.emulator.emulator.faults.add(fault)
        ctx.measured["injected"] = 6

    return inject


async def stt_400(ctx: Context) -> None:
    ctx.emulator.emulator.faults.add(Fault("error", at_audio_ms=1200, status_code=400))


async def restart_broker(ctx: Context) -> None:
    await asyncio.sleep(ctx.rng.uniform(2.0, 4.0))
    await asyncio.to_thread(ctx.broker.restart)


async def no_fault(ctx: Context) -> None:
    """The load is the failure: a backlog of every session's whole audio."""


def backlog_plan(scenario: Scenario, rng: random.Random) -> Plan:
    """Sessions of ~25 s (10 minutes with STT_SOAK=1): turns of 3 words, ~2 s each, in rotated order."""
    seconds = 600 if SOAK else 25
    texts = [" ".join(rng.sample(WORDS, 3)).capitalize() + "." for _ in range(max(2, seconds // 2))]
    sessions = {f"b{i:02d}": texts[i % 3 :] + texts[: i % 3] for i in range(scenario.sessions)}
    return Plan.of(sessions, ("pcm_s16le", 16000))


# -- checks besides exactly-once finals ------------------------------------------------------------


async def partitions_that_stay_keep_their_sessions(ctx: Context) -> None:
    # partitions that stay with w1 across the rebalances keep their sessions and sockets
    w1 = ctx.procs["w1"]
    assert ctx.statuses["w1"]["counters"]["partitions_kept"] > 0, w1.log_tail()


async def scale_in_hands_over_within_the_session_timeout(ctx: Context) -> None:
    # aiokafka's static members send no LeaveGroup: the group notices a scaled-in worker only when its
    # session times out, then rebalances; documented (README "Deploying") and measured here.
    bound = ctx.config.session_timeout_ms / 1000 + ctx.config.revoke_grace_s + 5.0
    assert ctx.measured["handover_s"] <= bound, f"hand-over took {ctx.measured['handover_s']:.1f} s (bound {bound} s)"


async def sigterm_exits_cleanly_within_the_deadline(ctx: Context) -> None:
    w1 = ctx.procs["w1"]
    exit_s, deadline = ctx.measured["exit_s"], ctx.measured["deadline_s"]
    assert w1.exits[-1] == 0, w1.log_tail()
    assert exit_s <= deadline, f"SIGTERM took {exit_s:.1f} s (deadline {deadline:.0f} s)"


async def every_injected_fault_hit(ctx: Context) -> None:
    faulted = sum(1 for s in ctx.stt_sessions() if s["fault"])
    ctx.figures.add("reconnects", faulted)
    assert faulted == ctx.measured["injected"], "every injected fault must have hit a connection"


async def only_that_session_failed(ctx: Context) -> None:
    statuses = Counter(r["status"] for r in ctx.finals() if r["kind"] == "session")
    ctx.figures.set(failed=statuses["failed"])
    assert statuses == {"complete": ctx.scenario.sessions - 1, "failed": 1}


async def no_word_is_cut(ctx: Context) -> None:
    """Silence filled into a word during the outage would cut it: the text or the turns would differ."""
    finals, plan = ctx.finals(), ctx.plan
    for session_id, turns in plan.sessions.items():
        ended = [
            (r["status"], r["transcript"]) for r in finals if r["kind"] == "session" and r["session_id"] == session_id
        ]
        assert ended == [("complete", plan.text(session_id))], f"{session_id}: {ended!r}"
        got = [r["transcript"] for r in finals if r["kind"] == "turn" and r["session_id"] == session_id]
        assert got == turns, f"{session_id}: turns {got!r} != {turns!r}"
    events = await read_topic(
        ctx.broker.bootstrap,
        ctx.config.turns_topic,
        until=lambda rs: sum(r["type"] == "session.end" for r in rs) >= len(plan.sessions),
        limit_s=60,
    )
    for session_id, turns in plan.sessions.items():
        ends = [e["transcript"] for e in events if e["session_id"] == session_id and e["type"] == "turn.end"]
        assert ends == turns, f"{session_id}: turn.end {ends!r} != {turns!r}"


async def backlog_memory_is_bounded(ctx: Context) -> None:
    w1 = ctx.procs["w1"]
    counters = ctx.statuses["w1"]["counters"]
    pauses, resumes = counters["pauses"], counters["resumes"]
    peak_mib = w1.peak_rss / 1024
    ctx.figures.set(
        sessions=len(ctx.plan.sessions),
        audio_s_per_session=ctx.plan.shortest_audio_s(),
        backlog_audio_mib=sum(len(a[0]) for a in ctx.plan.audio.values()) / 2**20,
        pauses=pauses,
    )
    assert pauses > 0 and resumes > 0, "the backlog must have paused and resumed partitions"
    assert peak_mib < 400, f"worker peak RSS {peak_mib:.0f} MiB"


# -- the table -------------------------------------------------------------------------------------


SCENARIOS = [
    Scenario("kill-9", sessions=20, seeds=(1, 2, 3), inject=kill_9_and_restart, paced=True),
    Scenario(
        "scale 1-3-2",
        sessions=20,
        seeds=(101, 102, 103),
        inject=scale_1_3_2,
        workers=("w1", "w2", "w3"),
        started=("w1",),
        paced=True,
        checks=(partitions_that_stay_keep_their_sessions, scale_in_hands_over_within_the_session_timeout),
    ),
    Scenario(
        "SIGTERM",
        sessions=16,
        seeds=(201, 202, 203),
        inject=sigterm_w1,
        workers=("w1", "w2"),
        checks=(sigterm_exits_cleanly_within_the_deadline,),
    ),
    *(
        Scenario(
            f"STT {kind}",
            sessions=10,
            seeds=(301, 302, 303),
            turns=(3, 3),
            words=(3, 4),
            inject=stt_faults(kind),
            checks=(every_injected_fault_hit,),
        )
        for kind in ("drop", "5xx")
    ),
    Scenario("STT 4xx", sessions=8, seeds=(400,), inject=stt_400, may_fail=1, checks=(only_that_session_failed,)),
    Scenario(
        "broker restart",
        sessions=12,
        seeds=(501, 502, 503),
        inject=restart_broker,
        own_broker=True,
        read_after_fault=True,
        collect_s=180.0,
        # Silence fill on, at the production default budget: while Kafka is away and until a record
        # arrives after it is back (or `recovery_grace_s` passes), partitions are not live, so the
        # producers' reconnect gap is never filled; `no_word_is_cut` checks every turn.
        settings={"silence_budget_ms": 400.0},
        checks=(no_word_is_cut,),
    ),
    Scenario(
        "backlog (soak)" if SOAK else "backlog",
        sessions=50,
        seeds=(600,),
        plan=backlog_plan,
        inject=no_fault,
        backlog=True,
        paced=True,
        settings={"pause_high_bytes": 2 * 2**20, "pause_low_bytes": 512 * 2**10, "drain_deadline_s": 60},
        collect_per_audio_s=3.0,
        checks=(backlog_memory_is_bounded,),
        timeout_s=3600.0 if SOAK else 600.0,
    ),
]


@pytest.mark.parametrize(
    "scenario", [pytest.param(s, id=s.id, marks=pytest.mark.timeout(s.timeout_s)) for s in SCENARIOS]
)
async def test_delivery_under_fault(
    scenario: Scenario, kafka_broker: KafkaBroker, emulator: EmulatorThread, tmp_path: Path
) -> None:
    figures = Figures()
    started = time.monotonic()
    passed = False
    try:
        with scenario_broker(scenario, kafka_broker) as broker:
            for seed in scenario.seeds:
                await run_trial(scenario, seed, broker, emulator, tmp_path / f"{scenario.id}-{seed}", figures)
        passed = True
    finally:
        report(scenario.name, passed=passed, wall_s=round(time.monotonic() - started, 1), **figures.as_report())
