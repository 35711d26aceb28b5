"""Benchmark the worker end to end: N concurrent realtime sessions through real Kafka and the STT emulator.

For each level of concurrency (``--sessions 1,10,40``), the bench:

1. starts a fresh in-process :class:`~pipeline.worker.Worker` on unique topics, runs a short warm-up probe
   session through it (partitions assigned, STT reachable) and measures its idle CPU;
2. launches the producers in a *separate process* (``--produce-only``, this same script): one realtime
   :func:`~pipeline.tools.produce.produce_audio` task per session, 100 ms chunks, then ``end``. The audio is
   a speech-like ``tones`` script (several turns, pauses between and inside turns) of ``--seconds`` each;
3. measures this process's CPU (``time.process_time()``) from the producers' launch until every session
   ended: with the producers and the STT emulator (``stt-pipeline emulator --engine tones``, also a
   separate process) elsewhere, that is the worker's CPU. Meanwhile it samples, read-only, how much audio
   each session's pacer holds;
4. diffs the ``pipeline.metrics.REGISTRY`` histograms (cumulative across levels) around the level:
   pacing drift, STT event → output acked, close → session final. Quantiles are interpolated
   linearly inside the histogram buckets, so they are only as fine as the buckets;
5. checks the emulator's ``/_emulator/stats`` (overloads, errors, close codes) and that every session's
   ``stt.transcripts`` ``kind=session`` record is ``complete`` with exactly the script's text.

Ratios: each level's worker CPU per audio-second against the smallest level's (the 1-session baseline),
and against a floor measured in the same run: the same sessions' records parsed and framed by
:class:`~pipeline.pacing.Pacer` in a tight loop on a virtual clock, with no I/O.

The machine is small and noisy: this reports figures, it asserts nothing about timings. The exit status
is non-zero only if the bench itself could not run. Run: ``.venv/bin/python bench/worker_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline import audio, metrics
from pipeline.audio import Encoding
from pipeline.emulator.engines.tones import script_text, synthesize
from pipeline.pacing import Pacer
from pipeline.records import parse
from pipeline.settings import Settings
from pipeline.tools.produce import TopicNotFound, plan_records, produce_audio
from pipeline.worker import Worker

THIS_SCRIPT = Path(__file__).resolve()
REPO_ROOT = THIS_SCRIPT.parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: the shared test scripts are in tests/support
    sys.path.append(str(REPO_ROOT))
from tests.support.scripts import MORE_WORDS as WORDS  # noqa: E402

log = logging.getLogger("bench")

TURN_PAUSES_MS = (1000, 1300, 1600, 2000)  # past the emulator's end-of-turn (≈ 805 ms of silence)
INNER_PAUSE_MS = 250  # a breath inside a turn: no end of turn
PROBE_RETRY_S = 10.0  # a warm-up probe not ended by then is followed by another
HESITATION_MS = 600  # past the eager end (≈ 458 ms), short of the end: eager_end then resume
LEAD_MS = 200  # synthesize()'s default leading silence
Script = list[str | int]
Record = tuple[bytes, list[tuple[str, bytes]], bytes]

DRIFT = "stt_pacing_drift_seconds"
EVENT_TO_ACK = "stt_event_to_ack_seconds"
CLOSE_TO_FINAL = "stt_close_to_final_seconds"
HISTOGRAMS = (DRIFT, EVENT_TO_ACK, CLOSE_TO_FINAL)
SILENCE_SENT = "stt_silence_sent_seconds"


# -- scripts -------------------------------------------------------------------------------------------------


def _utterance_ms(text: str) -> int:
    """Duration of one utterance in the tones codec: 40 ms per symbol, 80 ms between words."""
    words = text.split()
    return sum(len(w) for w in words) * 40 + 80 * (len(words) - 1)


def make_script(rng: random.Random, seconds: float) -> Script:
    """A conversation-like script of about ``seconds``: turns of 1-3 utterances separated by pauses."""
    target_ms = seconds * 1000.0
    script: Script = []
    t = float(LEAD_MS)
    while True:
        utterances = rng.choice((1, 1, 2, 2, 3))
        for u in range(utterances):
            words = rng.sample(WORDS, rng.randint(2, 5))
            text = " ".join(words)
            if u == 0:
                text = text.capitalize()
            if u == utterances - 1:
                text += rng.choice(".?!")
            if u:
                pause = HESITATION_MS if rng.random() < 0.3 else INNER_PAUSE_MS
                script.append(pause)
                t += pause
            script.append(text)
            t += _utterance_ms(text)
        pause = rng.choice(TURN_PAUSES_MS)
        if t + pause + 1500 > target_ms:  # no room for another turn: end on a pause
            script.append(max(int(target_ms - t), 1000))
            return script
        script.append(pause)
        t += pause


@dataclass
class SessionSpec:
    session_id: str
    script: Script

    @property
    def text(self) -> str:
        return script_text(self.script)


def make_sessions(level: int, seconds: float, seed: int, tag: str) -> list[SessionSpec]:
    rng = random.Random(f"{seed}-{level}")
    return [SessionSpec(f"bench-{level}-{i:03d}-{tag}", make_script(rng, seconds)) for i in range(level)]


# -- producers (run in a child process) ----------------------------------------------------------------------


async def _produce_one(spec: dict[str, Any], session: dict[str, Any], delay_s: float) -> dict[str, Any]:
    encoding = cast(Encoding, spec["encoding"])
    pcm = synthesize(session["script"], spec["sample_rate"], encoding)
    await asyncio.sleep(delay_s)
    loop = asyncio.get_running_loop()
    first: list[float] = []
    max_late = 0.0

    def progress(sent_s: float, _total_s: float) -> None:
        # Called after each chunk is handed to the producer; lateness against the first chunk's send time.
        nonlocal max_late
        now = loop.time()
        if not first:
            first.extend((now, sent_s))
            return
        max_late = max(max_late, (now - first[0]) - (sent_s - first[1]))

    sent = await produce_audio(
        spec["bootstrap"],
        spec["topic"],
        session["session_id"],
        pcm,
        encoding=encoding,
        sample_rate=spec["sample_rate"],
        chunk_ms=spec["chunk_ms"],
        realtime=True,
        progress=progress,
        end=True,
    )
    return {"session_id": session["session_id"], "records": sent, "max_late_ms": max_late * 1000.0}


async def produce_main(spec: dict[str, Any]) -> None:
    sessions = spec["sessions"]
    stagger_s = spec["stagger_ms"] / 1000.0
    cpu0, t0 = time.process_time(), time.monotonic()
    results = await asyncio.gather(*(_produce_one(spec, s, i * stagger_s) for i, s in enumerate(sessions)))
    report = {"sessions": results, "cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - t0}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


# -- metrics -------------------------------------------------------------------------------------------------


@dataclass
class HistogramSnapshot:
    """Cumulative bucket counts (by upper bound, ascending, +Inf last), count and sum of one histogram."""

    bounds: list[float]
    counts: list[float]
    count: float
    total: float

    def minus(self, before: HistogramSnapshot) -> HistogramSnapshot:
        return HistogramSnapshot(
            self.bounds,
            [a - b for a, b in zip(self.counts, before.counts, strict=True)],
            self.count - before.count,
            self.total - before.total,
        )

    def quantile(self, q: float, first_lower: float | None = None) -> float | None:
        """The ``q`` quantile, linearly interpolated inside its bucket; ``inf`` if it lies in the +Inf bucket.

        ``first_lower`` is the assumed lower edge of the first bucket (default: its upper bound).
        """
        if self.count <= 0:
            return None
        rank = q * self.count
        previous_count = 0.0
        for i, (bound, count) in enumerate(zip(self.bounds, self.counts, strict=True)):
            if count >= rank and count > previous_count:
                if math.isinf(bound):
                    return math.inf
                lower = (bound if first_lower is None else first_lower) if i == 0 else self.bounds[i - 1]
                return lower + (bound - lower) * (rank - previous_count) / (count - previous_count)
            previous_count = count
        return math.inf

    def share_above(self, bound: float) -> float:
        """Fraction of observations above the bucket bound ``bound`` (which must be one of the bounds)."""
        if self.count <= 0:
            return 0.0
        return (self.count - self.counts[self.bounds.index(bound)]) / self.count


def histogram(name: str) -> HistogramSnapshot:
    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in metrics.REGISTRY.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == f"{name}_count":
                count = sample.value
            elif sample.name == f"{name}_sum":
                total = sample.value
    if not buckets:
        raise KeyError(f"histogram {name} not in pipeline.metrics.REGISTRY")
    bounds = sorted(buckets)
    return HistogramSnapshot(bounds, [buckets[b] for b in bounds], count, total)


def counter(name: str) -> float:
    return sum(
        sample.value
        for family in metrics.REGISTRY.collect()
        for sample in family.samples
        if sample.name == f"{name}_total"
    )


def snapshot() -> dict[str, Any]:
    return {**{name: histogram(name) for name in HISTOGRAMS}, SILENCE_SENT: counter(SILENCE_SENT)}


def proc_cpu_s(pid: int | None) -> float | None:
    """utime + stime of another process, from /proc (None if unavailable)."""
    if pid is None:
        return None
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


# -- the floor: records parsed and framed by the Pacer alone -------------------------------------------------


def session_records(spec: SessionSpec, encoding: Encoding, rate: int, chunk_ms: float) -> list[tuple[Record, float]]:
    """The session's `stt.audio` records as the worker receives them, with their send times (s)."""
    pcm = synthesize(spec.script, rate, encoding)
    key = spec.session_id.encode()
    return [
        ((key, [(k, v.encode()) for k, v in r.headers.items()], r.value), r.at_ms / 1000.0)
        for r in plan_records(pcm, encoding=encoding, sample_rate=rate, chunk_ms=chunk_ms, end=True)
    ]


def pace_alone(records: Sequence[tuple[Record, float]], config: Settings) -> int:
    """Parse each record and push it through a Pacer polled on a virtual clock; returns frames produced."""
    pacer: Pacer | None = None
    frames = 0
    now = 0.0
    for (key, headers, value), at_s in records:
        message = parse(key, headers, value)
        now = at_s
        if message.type == "audio":
            fmt = message.format
            assert fmt is not None
            if pacer is None:
                frame = audio.frame_bytes(fmt.encoding, fmt.sample_rate, config.frame_ms)
                pacer = Pacer(
                    frame_bytes=frame,
                    frame_ms=config.frame_ms,
                    max_lead_ms=config.max_lead_ms,
                    silence_budget_ms=config.silence_budget_ms,
                    silence_frame=audio.silence(fmt.encoding, frame // audio.bytes_per_sample(fmt.encoding)),
                    bytes_per_ms=fmt.sample_rate * audio.bytes_per_sample(fmt.encoding) / 1000.0,
                )
            pacer.push(message.audio)
        elif pacer is not None:
            pacer.finish()
        if pacer is not None:
            frames += len(pacer.poll(now, input_live=True))
    while pacer is not None and not pacer.drained:
        wake = pacer.next_wakeup(now)
        now = now if wake is None else wake
        frames += len(pacer.poll(now, input_live=True))
    return frames


def measure_floor(
    sessions: Sequence[SessionSpec], encoding: Encoding, rate: int, chunk_ms: float, audio_s: float, min_cpu_s: float
) -> dict[str, float]:
    config = Settings.load(env={})
    prepared = [session_records(s, encoding, rate, chunk_ms) for s in sessions]
    rounds = 0
    frames = 0
    cpu0 = time.process_time()
    while True:
        for records in prepared:
            frames += pace_alone(records, config)
        rounds += 1
        cpu = time.process_time() - cpu0
        if cpu >= min_cpu_s:
            break
    return {
        "cpu_s": cpu,
        "audio_s": audio_s * rounds,
        "frames": frames,
        "cpu_per_audio_s": cpu / (audio_s * rounds),
    }


# -- the STT emulator (child process) ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return cast(dict[str, Any], json.loads(response.read()))


@contextlib.contextmanager
def emulator_process(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    binary = Path(sys.executable).parent / "stt-pipeline"
    log_path = workdir / "emulator.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "emulator", "--port", str(port), "--engine", "tones"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if http_json(f"{base}/_emulator/health", 1.0).get("status") == "ok":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("emulator did not become healthy within 60 s")
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # by PID: only the process this bench started
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def start_kafka() -> Any:
    """A :class:`tests.support.kafka.KafkaBroker` on free ports, started (it cleans up its data on stop)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))
    support = importlib.import_module("tests.support.kafka")
    return support.KafkaBroker().start()


def broker_pid(broker: Any) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((Path(broker.data_dir) / "kafka.pid").read_text().strip())
    return None


# -- sampling the worker's sessions (read-only) --------------------------------------------------------------


def exact_quantiles(values: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p99": None, "max": None}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": ordered[-1]}


class QueueSampler:
    """Every call: how much audio each open session holds in its pacer, and when its first frame went out.

    Reads the worker's open sessions (the private ``Worker._open``: session → pacer); changes nothing. If
    the worker's internals no longer look like that, sampling switches itself off and reports nothing.
    The first-frame time is only as fine as the sampling period (50 ms).
    """

    def __init__(self) -> None:
        self.queued_samples: list[float] = []
        self.seen: dict[str, float] = {}
        self.first_sent: dict[str, float] = {}
        self.available = True

    def sample(self, worker: Worker) -> None:
        if not self.available:
            return
        try:
            self._sample(worker)
        except (AttributeError, TypeError, KeyError) as exc:
            log.warning("queue sampling off: the worker's internals changed (%r)", exc)
            self.available = False

    def _sample(self, worker: Worker) -> None:
        now = time.monotonic()
        for session_id, current in list(worker._open.items()):
            session = current.session
            self.seen.setdefault(session_id, now)
            rate = session.format.sample_rate * audio.bytes_per_sample(session.format.encoding)
            if session.pacer.sent_audio_ms > 0:
                self.first_sent.setdefault(session_id, now)
                if session.phase == "streaming":
                    self.queued_samples.append(session.pacer.queued_bytes / rate * 1000.0)

    def queued(self) -> dict[str, float | None]:
        return exact_quantiles(self.queued_samples if self.available else [])

    def first_frame(self) -> dict[str, float | None]:
        if not self.available:
            return exact_quantiles([])
        return exact_quantiles([(t - self.seen[s]) * 1000.0 for s, t in self.first_sent.items()])


# -- one level -----------------------------------------------------------------------------------------------


def ended_total(worker: Worker) -> int:
    return sum(worker.stats.sessions_ended.values())


async def warm_up(worker: Worker, task: asyncio.Task[None], config: Settings, tag: str) -> int:
    """Wait until the worker has run one short probe session end to end (partitions assigned, STT reachable).

    Uses only the worker's public ``stats``, so it does not depend on how the worker tracks assignment.
    A probe that does not end within ``PROBE_RETRY_S`` is followed by a fresh one (its records may have
    been produced before the worker could take them); returns how many probes never ended. Everything
    here happens in this process, before any measurement window opens.
    """
    deadline = time.monotonic() + 90
    probes = 0
    while ended_total(worker) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no warm-up probe session ended within 90 s: {worker.stats.as_dict()}")
        try:
            await produce_audio(
                config.bootstrap_servers,
                config.audio_topic,
                f"bench-probe-{tag}-{probes}",
                synthesize(["Probe."], 16000, "pcm_s16le"),
                encoding="pcm_s16le",
                sample_rate=16000,
                realtime=False,
                topic_timeout_s=2.0,
            )
        except TopicNotFound:  # the worker creates the topics as it starts
            if task.done():
                task.result()
                raise RuntimeError("worker stopped while starting") from None
            continue
        probes += 1
        retry_at = time.monotonic() + PROBE_RETRY_S
        while ended_total(worker) < 1 and time.monotonic() < retry_at:
            if task.done():
                task.result()
                raise RuntimeError("worker stopped during the warm-up probe")
            await asyncio.sleep(0.05)
    lost = probes - ended_total(worker)
    if lost > 0:
        log.warning("%d warm-up probe session(s) produced before the worker was ready never ended", lost)
    return max(lost, 0)


@dataclass
class LevelResult:
    sessions: int
    audio_s: float
    wall_s: float
    worker_cpu_s: float
    cpu_per_audio_s: float
    core_share: float
    idle_cpu_per_s: float
    marginal_cpu_per_audio_s: float
    ratio_to_baseline: float | None = None
    ratio_to_floor: float | None = None
    drift_ms: dict[str, float | None] = field(default_factory=dict)
    event_to_ack_ms: dict[str, float | None] = field(default_factory=dict)
    close_to_final_ms: dict[str, float | None] = field(default_factory=dict)
    silence_fill_s: float = 0.0
    ended: dict[str, int] = field(default_factory=dict)
    exact: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    emulator: dict[str, Any] = field(default_factory=dict)
    producers: dict[str, Any] = field(default_factory=dict)
    other_cpu_s: dict[str, float | None] = field(default_factory=dict)
    worker_stats: dict[str, Any] = field(default_factory=dict)
    probes_lost: int = 0
    queued_ms: dict[str, float | None] = field(default_factory=dict)
    open_to_first_frame_ms: dict[str, float | None] = field(default_factory=dict)
    timed_out: bool = False


def quantiles_ms(h: HistogramSnapshot, scale: float, first_lower: float | None = None) -> dict[str, float | None]:
    out: dict[str, float | None] = {"n": h.count}
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        value = h.quantile(q, first_lower)
        out[label] = None if value is None else value * scale
    out["mean"] = h.total / h.count * scale if h.count else None
    return out


async def read_finals(
    bootstrap: str, topic: str, session_ids: set[str], limit_s: float = 30.0, isolation: str = "read_committed"
) -> dict[str, dict[str, Any]]:
    """The ``kind=session`` transcripts of ``session_ids``, read from the start until all are in or ``limit_s``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level=isolation
    )
    await consumer.start()
    finals: dict[str, dict[str, Any]] = {}
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                while not session_ids <= finals.keys():
                    batch = await consumer.getmany(timeout_ms=200)
                    for items in batch.values():
                        for item in items:
                            record = orjson.loads(item.value)
                            if record.get("kind") == "session":
                                finals[record["session_id"]] = record
    finally:
        await consumer.stop()
    return finals


async def run_level(
    args: argparse.Namespace,
    level: int,
    bootstrap: str,
    base_url: str,
    emulator_pid: int,
    kafka_pid: int | None,
    workdir: Path,
) -> LevelResult:
    tag = uuid.uuid4().hex[:8]
    sessions = make_sessions(level, args.seconds, args.seed, tag)
    encoding, rate = args.encoding, args.sample_rate
    frame = audio.bytes_per_sample(encoding)
    audio_s = sum(len(synthesize(s.script, rate, encoding)) / frame / rate for s in sessions)
    config = Settings.load(env={}).replace(
        bootstrap_servers=bootstrap,
        stt_base_url=base_url,
        api_key="bench",
        audio_topic=f"bench-audio-{tag}",
        turns_topic=f"bench-turns-{tag}",
        transcripts_topic=f"bench-transcripts-{tag}",
        sessions_topic=f"bench-sessions-{tag}",
        dead_letter_topic=f"bench-dead-{tag}",
        group_id=f"bench-{tag}",
        topic_partitions=args.partitions,
    )
    spec_path = workdir / f"produce-{tag}.json"
    spec_path.write_text(
        json.dumps(
            {
                "bootstrap": bootstrap,
                "topic": config.audio_topic,
                "encoding": encoding,
                "sample_rate": rate,
                "chunk_ms": args.chunk_ms,
                "stagger_ms": args.stagger_ms,
                "sessions": [{"session_id": s.session_id, "script": s.script} for s in sessions],
            }
        )
    )
    worker = Worker(config)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop), name=f"worker-{level}")
    producer: asyncio.subprocess.Process | None = None
    try:
        probes_lost = await warm_up(worker, task, config, tag)
        emulator_before = len(http_json(f"{base_url}/_emulator/stats")["sessions"])
        ended_before = dict(worker.stats.sessions_ended)

        # The worker's fixed cost (consumer poll loop, commit loop) with no session open, to separate it out.
        idle_cpu0, idle_t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        idle_cpu_per_s = (time.process_time() - idle_cpu0) / (time.monotonic() - idle_t0)

        before = snapshot()
        others0 = {"emulator": proc_cpu_s(emulator_pid), "kafka": proc_cpu_s(kafka_pid)}
        cpu0, t0 = time.process_time(), time.monotonic()
        producer = await asyncio.create_subprocess_exec(
            sys.executable,
            str(THIS_SCRIPT),
            "--produce-only",
            str(spec_path),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=str(REPO_ROOT),
        )
        producer_out = asyncio.create_task(producer.communicate())
        limit = time.monotonic() + args.seconds + config.drain_deadline_s + 60
        timed_out = False
        sampler = QueueSampler()
        while ended_total(worker) < sum(ended_before.values()) + level:
            sampler.sample(worker)
            if task.done():
                task.result()
                raise RuntimeError("worker stopped during the level")
            if time.monotonic() > limit:
                timed_out = True
                break
            await asyncio.sleep(0.05)
        cpu1, t1 = time.process_time(), time.monotonic()
        others1 = {"emulator": proc_cpu_s(emulator_pid), "kafka": proc_cpu_s(kafka_pid)}
        after = snapshot()

        try:
            stdout, _ = await asyncio.wait_for(producer_out, 30)
        except TimeoutError:
            producer.terminate()  # by PID: the producer process this level started
            stdout, _ = await producer_out
        produced = json.loads(stdout.decode().strip().splitlines()[-1]) if producer.returncode == 0 and stdout else {}
        # Finals are read while the worker still runs: what it delivers in steady state, not on shutdown.
        wanted = {s.session_id for s in sessions}
        finals = await read_finals(bootstrap, config.transcripts_topic, wanted)
        missing = wanted - finals.keys()
        unfinished = (
            await read_finals(bootstrap, config.transcripts_topic, missing, 5.0, "read_uncommitted") if missing else {}
        )
    finally:
        if producer is not None and producer.returncode is None:
            producer.terminate()  # by PID: the producer process this level started
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.wait(), 30)
        stop.set()
        with contextlib.suppress(Exception):  # a worker crash was already raised above
            await asyncio.wait_for(task, 60)

    emu = http_json(f"{base_url}/_emulator/stats")
    ours = emu["sessions"][emulator_before:]

    cpu = cpu1 - cpu0
    wall = t1 - t0
    d = {name: after[name].minus(before[name]) for name in HISTOGRAMS}
    result = LevelResult(
        sessions=level,
        audio_s=audio_s,
        wall_s=wall,
        worker_cpu_s=cpu,
        cpu_per_audio_s=cpu / audio_s,
        core_share=cpu / wall,
        idle_cpu_per_s=idle_cpu_per_s,
        marginal_cpu_per_audio_s=max(cpu - idle_cpu_per_s * wall, 0.0) / audio_s,
        drift_ms=quantiles_ms(d[DRIFT], 1000.0, first_lower=-config.max_lead_ms / 1000),
        event_to_ack_ms=quantiles_ms(d[EVENT_TO_ACK], 1000.0, first_lower=0.0),
        close_to_final_ms=quantiles_ms(d[CLOSE_TO_FINAL], 1000.0, first_lower=0.0),
        silence_fill_s=after[SILENCE_SENT] - before[SILENCE_SENT],
        ended={
            k: v - ended_before.get(k, 0) for k, v in worker.stats.sessions_ended.items() if v - ended_before.get(k, 0)
        },
        timed_out=timed_out,
        probes_lost=probes_lost,
        worker_stats=worker.stats.as_dict(),
    )
    result.drift_ms["share_above_100ms"] = d[DRIFT].share_above(0.1)
    result.queued_ms = sampler.queued()
    result.open_to_first_frame_ms = sampler.first_frame()
    for s in sessions:
        final = finals.get(s.session_id)
        if final is not None and final.get("status") == "complete" and final.get("transcript") == s.text:
            result.exact += 1
        else:
            result.mismatches.append(
                {
                    "session_id": s.session_id,
                    "status": None if final is None else final.get("status"),
                    "expected": s.text,
                    "got": None if final is None else final.get("transcript"),
                    "written_not_committed": s.session_id in unfinished,
                }
            )
    result.emulator = {
        "sessions": len(ours),
        "overloads": sum(bool(s["overloaded"]) for s in ours),
        "errors": [e for s in ours for e in s["errors"]],
        "close_codes": sorted({s["close_code"] for s in ours}, key=str),
        "max_lead_ms": max((s["max_lead_ms"] for s in ours), default=0.0),
        "realtime_ratio_max": max((s["realtime_ratio"] for s in ours), default=0.0),
    }
    late = [s["max_late_ms"] for s in produced.get("sessions", [])]
    result.producers = {
        "exit_code": producer.returncode,
        "cpu_s": produced.get("cpu_s"),
        "max_late_ms": max(late, default=None),
    }
    result.other_cpu_s = {
        "emulator": delta(others1["emulator"], others0["emulator"]),
        "kafka": delta(others1["kafka"], others0["kafka"]),
        "producers": produced.get("cpu_s"),
    }
    return result


# -- report --------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "overflow"
    return f"{value:.{digits}f}{suffix}"


def render(results: list[LevelResult], floor: dict[str, float], args: argparse.Namespace) -> str:
    rows: list[tuple[str, list[str]]] = [
        ("concurrent sessions", [str(r.sessions) for r in results]),
        ("audio (s, all sessions)", [fmt(r.audio_s, 1) for r in results]),
        ("wall (s, producers start → last session ended)", [fmt(r.wall_s, 1) for r in results]),
        ("worker CPU (s)", [fmt(r.worker_cpu_s, 2) for r in results]),
        ("worker CPU-ms per audio-s", [fmt(r.cpu_per_audio_s * 1000, 2) for r in results]),
        ("  x baseline (smallest level)", [fmt(r.ratio_to_baseline, 2, "x") for r in results]),
        ("  x bare-pacing floor", [fmt(r.ratio_to_floor, 0, "x") for r in results]),
        ("worker share of one core", [fmt(r.core_share * 100, 1, "%") for r in results]),
        ("idle worker CPU-ms per wall-s", [fmt(r.idle_cpu_per_s * 1000, 2) for r in results]),
        ("marginal CPU-ms per audio-s (minus idle)", [fmt(r.marginal_cpu_per_audio_s * 1000, 2) for r in results]),
        ("pacing drift p50 / p99 (ms)*", [f"{fmt(r.drift_ms['p50'])} / {fmt(r.drift_ms['p99'])}" for r in results]),
        ("  frames > +100 ms late", [fmt(cast(float, r.drift_ms["share_above_100ms"]) * 100, 2, "%") for r in results]),
        (
            "audio queued in worker p50 / max (ms)",
            [f"{fmt(r.queued_ms['p50'])} / {fmt(r.queued_ms['max'])}" for r in results],
        ),
        (
            "session open → 1st frame p50 / max (ms)",
            [f"{fmt(r.open_to_first_frame_ms['p50'])} / {fmt(r.open_to_first_frame_ms['max'])}" for r in results],
        ),
        (
            "event → ack p50 / p99 (ms)*",
            [f"{fmt(r.event_to_ack_ms['p50'], 1)} / {fmt(r.event_to_ack_ms['p99'], 1)}" for r in results],
        ),
        (
            "close → final p50 / p99 (ms)*",
            [f"{fmt(r.close_to_final_ms['p50'])} / {fmt(r.close_to_final_ms['p99'])}" for r in results],
        ),
        ("silence fill sent (s)", [fmt(r.silence_fill_s, 1) for r in results]),
        ("sessions ended", [",".join(f"{k}={v}" for k, v in sorted(r.ended.items())) or "none" for r in results]),
        ("exact complete transcripts", [f"{r.exact}/{r.sessions}" for r in results]),
        ("emulator overloads", [str(r.emulator["overloads"]) for r in results]),
        ("emulator errors", [str(len(r.emulator["errors"])) for r in results]),
        ("emulator close codes", [",".join(map(str, r.emulator["close_codes"])) for r in results]),
        ("emulator max lead (ms)", [fmt(r.emulator["max_lead_ms"]) for r in results]),
        ("producer max lateness (ms)", [fmt(r.producers["max_late_ms"]) for r in results]),
        (
            "CPU s: emulator / kafka / producers",
            [" / ".join(fmt(r.other_cpu_s[k], 1) for k in ("emulator", "kafka", "producers")) for r in results],
        ),
    ]
    label_w = max(len(label) for label, _ in rows)
    col_w = [max(len(values[i]) for _, values in rows) for i in range(len(results))]
    lines = [
        f"worker bench: {args.seconds:g} s of {args.encoding}/{args.sample_rate} Hz per session, "
        f"{args.chunk_ms:g} ms chunks, {args.partitions} partitions, {os.cpu_count()} CPUs",
        "",
    ]
    for label, values in rows:
        cells = "  ".join(v.rjust(w) for v, w in zip(values, col_w, strict=True))
        lines.append(f"{label.ljust(label_w)}  {cells}")
    lines += [
        "",
        f"bare-pacing floor: {floor['cpu_per_audio_s'] * 1e6:.1f} CPU-µs per audio-s "
        f"(records parsed + Pacer framing on a virtual clock, "
        f"{floor['audio_s']:.0f} audio-s in {floor['cpu_s']:.2f} s)",
        "* interpolated inside the prometheus histogram buckets (drift: -300..+2000 ms, 10-500 ms wide;",
        "  latencies: 5 ms..30 s); negative drift = sent early (within the lead), positive = late.",
        "  'overflow' = beyond the last finite bucket. Timings on a small shared machine are noisy.",
    ]
    for r in results:
        for m in r.mismatches[:3]:
            note = " (written, but not in a committed transaction)" if m["written_not_committed"] else ""
            lines.append(f"level {r.sessions}: {m['session_id']} status={m['status']} got={m['got']!r}{note}")
        if r.producers["exit_code"] != 0:
            lines.append(f"level {r.sessions}: the producer process exited with {r.producers['exit_code']}")
        if r.probes_lost:
            lines.append(
                f"level {r.sessions}: {r.probes_lost} warm-up probe session(s), produced while the worker was "
                "starting, never ended (see the README)"
            )
        if r.timed_out:
            lines.append(f"level {r.sessions}: TIMED OUT waiting for sessions to end")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "overflow"
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


# -- main ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--sessions", default="1,10,40", help="concurrency levels, comma-separated (default 1,10,40)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session (default 20)")
    parser.add_argument("--encoding", default="pcm_s16le", choices=audio.ENCODINGS)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--chunk-ms", type=float, default=100.0, help="producer chunk size (default 100)")
    parser.add_argument("--stagger-ms", type=float, default=0.0, help="delay between session starts (default 0)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the bench's audio topic")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="idle worker CPU measured before each level")
    parser.add_argument("--floor-cpu-s", type=float, default=1.0, help="CPU time to spend measuring the floor")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--produce-only", metavar="SPEC", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    levels = sorted({int(x) for x in args.sessions.split(",") if x.strip()})
    if not levels or min(levels) < 1:
        raise SystemExit("--sessions needs positive integers")
    workdir = Path(tempfile.mkdtemp(prefix="stt-bench-"))
    broker = None
    try:
        t_kafka = time.monotonic()
        broker = start_kafka()
        print(f"kafka up at {broker.bootstrap} in {time.monotonic() - t_kafka:.1f} s", file=sys.stderr)
        with emulator_process(workdir) as (base_url, emulator):
            print(f"emulator (tones) at {base_url}, pid {emulator.pid}", file=sys.stderr)
            results = []
            for level in levels:
                print(f"level {level}: {level} x {args.seconds:g} s in realtime ...", file=sys.stderr)
                results.append(
                    await run_level(args, level, broker.bootstrap, base_url, emulator.pid, broker_pid(broker), workdir)
                )
        largest = make_sessions(max(levels), args.seconds, args.seed, "floor")
        encoding, rate = args.encoding, args.sample_rate
        floor_audio_s = sum(
            len(synthesize(s.script, rate, encoding)) / audio.bytes_per_sample(encoding) / rate for s in largest
        )
        floor = measure_floor(largest, encoding, rate, args.chunk_ms, floor_audio_s, args.floor_cpu_s)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    baseline = results[0].cpu_per_audio_s
    for r in results:
        r.ratio_to_baseline = r.cpu_per_audio_s / baseline
        r.ratio_to_floor = r.cpu_per_audio_s / floor["cpu_per_audio_s"]
    print(render(results, floor, args))
    return {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "produce_only")},
        "cpus": os.cpu_count(),
        "baseline": {"sessions": results[0].sessions, "cpu_per_audio_s": baseline},
        "floor": floor,
        "levels": [asdict(r) for r in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.produce_only:
        asyncio.run(produce_main(json.loads(Path(args.produce_only).read_text())))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    figures = asyncio.run(bench(args))
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(figures), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
