"""The analytics app against the topics it reads: a real broker, a real worker process, the tones
emulator and a real `stt-pipeline analytics` process (killed -9 and restarted mid-stream).

Ten sessions (three on the manual endpoint, one failed by the STT service) and three rejected input
records go through the worker; an aborted transaction is written to every partition of every topic
analytics reads. Then the web views, the per-minute counters and the DuckDB rows (through
`stt-pipeline analytics query`) must equal what a read_committed reader finds on the topics: counts,
texts and statuses. The dashboard is loaded in a real headless Chromium and must show a streamed session.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.analytics.core import words
from pipeline.emulator.faults import Fault
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings
from tests.support.analytics import AnalyticsProcess
from tests.support.config import worker_config
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.kafka import free_ports
from tests.support.scripts import WORDS, Record, read_topic, session_records
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / ".cache" / "analytics-dashboard.png"
PARTITIONS = 3


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:
        yield emu


def script(rng: random.Random, turns: int) -> list[str]:
    return [" ".join(rng.sample(WORDS, rng.randint(2, 4))).capitalize() + "." for _ in range(turns)]


def realtime_schedule(
    sessions: dict[str, list[Record]], rates: dict[str, tuple[int, int]], stagger_s: float
) -> list[tuple[float, Record]]:
    """(due seconds, record): each session's chunks at the time their audio starts, sessions staggered."""
    schedule: list[tuple[float, Record]] = []
    for i, (session_id, records) in enumerate(sessions.items()):
        rate, sample = rates[session_id]
        due = i * stagger_s
        for record in records:
            schedule.append((due, record))
            due += len(record[2]) / (rate * sample)
    return sorted(schedule, key=lambda item: item[0])


async def produce(bootstrap: str, topic: str, schedule: list[tuple[float, Record]], at_s: dict[float, Any]) -> None:
    """Send on an absolute clock; ``at_s`` maps a moment (s from start) to a callable run once then."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    moments = sorted(at_s)
    t0 = time.monotonic()
    try:
        for due, (key, headers, value) in schedule:
            await asyncio.sleep(max(0.0, t0 + due - time.monotonic()))
            while moments and time.monotonic() - t0 >= moments[0]:
                await asyncio.to_thread(at_s.pop(moments.pop(0)))
            await producer.send(topic, value=value, key=key or None, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def write_aborted(config: Settings, session_id: str) -> None:
    """One transaction with valid-looking records on every partition of the three topics, aborted."""
    producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap_servers, transactional_id=f"abort-{session_id}")
    await producer.start()
    try:
        await producer.begin_transaction()
        turn = {"session_id": session_id, "seq": 0, "endpoint": "auto", "request_id": None, "audio_ms": 1000, "at": 1}
        final = {
            "kind": "session",
            "session_id": session_id,
            "seq": 0,
            "turn": 1,
            "transcript": "Never.",
            "status": "complete",
            "audio_ms": 1000.0,
            "at": 2,
        }
        letter = {"reason": "bad_header", "detail": "aborted", "session_id": session_id,
                  "source": {"topic": config.audio_topic, "partition": 0, "offset": 0, "timestamp": None},
                  "headers": {}, "value_b64": "", "value_size": 0, "at": 3}  # fmt: skip
        for partition in range(PARTITIONS):
            key = session_id.encode()
            for value in (
                {**turn, "type": "session.start"},
                {**turn, "seq": 1, "type": "turn.end", "turn": 0, "transcript": "Never."},
                {**turn, "seq": 2, "type": "session.end", "status": "complete"},
            ):
                await producer.send(config.turns_topic, orjson.dumps(value), key=key, partition=partition)
            await producer.send(config.transcripts_topic, orjson.dumps(final), key=key, partition=partition)
            await producer.send(config.dead_letter_topic, orjson.dumps(letter), key=key, partition=partition)
        await producer.flush()
        await producer.abort_transaction()
    finally:
        await producer.stop()


def bad_records(tag: str) -> list[Record]:
    """Rejected by the worker: unknown_encoding, bad_header (no seq), missing_session_id."""
    fmt = [("encoding", b"pcm_s16le"), ("sample_rate", b"16000")]
    return [
        (f"dl-enc-{tag}".encode(), [("type", b"audio"), ("seq", b"0"), ("encoding", b"bogus"), fmt[1]], b"\0\0"),
        (f"dl-seq-{tag}".encode(), [("type", b"audio"), *fmt], b"\0\0"),
        (b"", [("type", b"end"), ("seq", b"0")], b""),
    ]


def wait_for(condition: Any, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {limit_s} s waiting for {what}")


def dashboard_shows(url: str, session_id: str, screenshot: Path) -> str:
    """Load the dashboard in headless Chromium; once it lists ``session_id`` among the recent finals,
    save a screenshot and return the page's text."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))
    try:
        driver.get(url)
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, f"finals-{session_id}"))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return str(driver.find_element(By.TAG_NAME, "body").text)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_analytics_matches_the_topics_across_a_kill(
    kafka_bootstrap: str, emulator: EmulatorThread, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    rng = random.Random(11)
    (port,) = free_ports(1)
    config = worker_config(
        kafka_bootstrap,
        emulator.base_url,
        topic_partitions=PARTITIONS,
        commit_interval_ms=150,
        silence_budget_ms=2000.0,
        session_timeout_ms=6000,
        analytics_port=port,
        analytics_db=tmp_path / "analytics.duckdb",
        analytics_id=f"analytics-{tag}",
    )
    asyncio.run(ensure_topics(config))
    aborted = f"aborted-{tag}"
    asyncio.run(write_aborted(config, aborted))

    failing = f"fail-{tag}"
    sessions: dict[str, list[Record]] = {}
    rates: dict[str, tuple[int, int]] = {}
    sessions[failing] = session_records(failing, script(rng, 3), "pcm_s16le", 16000, rng)  # type: ignore[arg-type]
    rates[failing] = (16000, 2)
    for i in range(9):
        session_id = f"{'man' if i < 3 else 'auto'}-{i}-{tag}"
        endpoint = "manual" if i < 3 else "auto"
        sessions[session_id] = session_records(
            session_id,
            script(rng, rng.randint(4, 6)),
            "pcm_s16le",
            16000,
            rng,
            endpoint=endpoint,  # type: ignore[arg-type]
        )
        rates[session_id] = (16000, 2)

    worker = WorkerProcess(config, tmp_path / "worker.log", f"w-{tag}").start()
    analytics = AnalyticsProcess(config, tmp_path / "analytics.log").start()
    try:
        analytics.wait_ready()
        # The failing session first, alone: the next STT connection gets a 400 after 1.2 s of audio.
        emulator.emulator.faults.add(Fault("error", at_audio_ms=1200, status_code=400))
        first = realtime_schedule({failing: sessions[failing]}, rates, 0.0)
        asyncio.run(produce(kafka_bootstrap, config.audio_topic, first, {}))

        rest = {k: v for k, v in sessions.items() if k != failing}
        schedule = [(0.0, record) for record in bad_records(tag)] + realtime_schedule(rest, rates, 0.3)
        asyncio.run(produce(kafka_bootstrap, config.audio_topic, schedule, {}))

        # -- what the topics hold (read_committed) ---------------------------------------------------
        def ended(records: list[dict[str, Any]]) -> bool:
            return len({r["session_id"] for r in records if r["type"] == "session.end"}) == len(sessions)

        turns = asyncio.run(read_topic(kafka_bootstrap, config.turns_topic, until=ended))
        finals_all = asyncio.run(
            read_topic(
                kafka_bootstrap,
                config.transcripts_topic,
                until=lambda rs: sum(r["kind"] == "session" for r in rs) == len(sessions),
            )
        )
        letters = asyncio.run(read_topic_letters(config))
        finals = {r["session_id"]: r for r in finals_all if r["kind"] == "session"}
        turn_ends = [r for r in turns if r["type"] == "turn.end"]
        errors = Counter(
            (r["error"]["error_code"] or str(r["error"]["status_code"])) for r in turns if r["type"] == "session.error"
        )
        statuses = Counter(f["status"] for f in finals.values())
        assert statuses["failed"] == 1 and finals[failing]["status"] == "failed"
        # Ours, and the failed session's audio after it ended.
        assert {r["session_id"] for r in letters} >= {f"dl-enc-{tag}", f"dl-seq-{tag}", None, failing}
        assert aborted not in {r["session_id"] for r in turns + finals_all + letters}

        # -- the counters ----------------------------------------------------------------------------
        expected_counts: dict[str, float] = {
            "sessions_started": len(sessions),
            "turns": len(turn_ends),
            "words": sum(words(r["transcript"]) for r in turn_ends),
            **{f"sessions_ended.{status}": n for status, n in statuses.items()},
            **{f"dead_letters.{reason}": n for reason, n in Counter(r["reason"] for r in letters).items()},
            **{f"errors.{code}": n for code, n in errors.items()},
        }
        audio_s = sum(f["audio_ms"] for f in finals.values()) / 1000

        def stats() -> dict[str, Any]:
            body: dict[str, Any] = analytics.get("/stats?minutes=30")[1]
            return body

        wait_for(
            lambda: {k: v for k, v in stats()["total"]["counts"].items() if k != "audio_s"} == expected_counts,
            60,
            f"the counters to reach {expected_counts} (last: {stats()['total']['counts']})",
        )
        time.sleep(1.5)  # anything counted twice would show by now
        total = stats()["total"]
        assert {k: v for k, v in total["counts"].items() if k != "audio_s"} == expected_counts
        assert total["counts"]["audio_s"] == pytest.approx(audio_s, abs=1e-6)
        latencies = [f["at"] - f["end_at"] for f in finals.values() if "end_at" in f]
        assert total["latency_ms"]["n"] == len(latencies) >= len(sessions) - 1
        # The minutes add up to the totals.
        summed: Counter[str] = Counter()
        for minute in stats()["minutes"]:
            summed.update(minute["counts"])
        assert {k: v for k, v in summed.items() if k != "audio_s"} == expected_counts

        # -- the views -------------------------------------------------------------------------------
        assert analytics.get("/sessions")[1]["sessions"] == []  # none open
        for session_id, final in finals.items():
            status, body = analytics.get(f"/sessions/{session_id}")
            assert status == 200
            assert body["status"] == final["status"]
            assert body["transcript"] == final["transcript"]
            expected_turns = [r["transcript"] for r in turn_ends if r["session_id"] == session_id]
            assert [t["transcript"] for t in body["turns"]] == expected_turns
            assert "".join(expected_turns) == final["transcript"]
        assert analytics.get(f"/sessions/{aborted}")[0] == 404
        assert analytics.get("/sessions/never-seen")[0] == 404

        # -- the store, through the CLI while the app runs -------------------------------------------
        rows = analytics.query("SELECT session_id, status, turns, words, transcript, latency_ms FROM sessions")
        assert {r["session_id"]: (r["status"], int(r["turns"]), r["transcript"]) for r in rows} == {
            s: (f["status"], f["turn"], f["transcript"]) for s, f in finals.items()
        }
        turn_rows = analytics.query("SELECT session_id, turn, transcript FROM turns ORDER BY session_id, turn")
        assert sorted((r["session_id"], int(r["turn"]), r["transcript"]) for r in turn_rows) == sorted(
            (r["session_id"], r["turn"], r["transcript"]) for r in turn_ends
        )

        # -- the dashboard in a real browser ---------------------------------------------------------
        last = max(finals.values(), key=lambda f: f["at"])["session_id"]
        text = dashboard_shows(analytics.base_url + "/", last, SCREENSHOT)
        assert last in text and "sessions now" in text
        assert SCREENSHOT.stat().st_size > 10_000

        # -- kill -9 mid-stream and restart ----------------------------------------------------------
        more = {f"kill-{i}-{tag}": session_records(f"kill-{i}-{tag}", script(rng, 6), "pcm_s16le", 16000, rng)  # type: ignore[arg-type]
                for i in range(4)}  # fmt: skip
        rates.update({k: (16000, 2) for k in more})
        before_kill: dict[str, Any] = {}

        def kill_and_restart() -> None:
            before_kill.update({s["session_id"]: s for s in analytics.get("/sessions")[1]["sessions"]})
            analytics.kill()
            analytics.start()

        asyncio.run(
            produce(kafka_bootstrap, config.audio_topic, realtime_schedule(more, rates, 0.2), {3.0: kill_and_restart})
        )
        analytics.wait_ready()
        assert before_kill, "some sessions were live when the app was killed"

        # Live sessions resume: what the killed app had shown comes back (restored from the changelogs,
        # or read again from the offsets it had not committed) and goes on from there.
        def resumed() -> bool:
            now = {s["session_id"]: s for s in analytics.get("/sessions?all=1")[1]["sessions"]}
            return all(k in now and now[k]["turns"] >= seen["turns"] for k, seen in before_kill.items())

        wait_for(resumed, 30, f"the sessions live before the kill to resume: {sorted(before_kill)}")
        everything = len(sessions) + len(more)
        turns = asyncio.run(
            read_topic(
                kafka_bootstrap,
                config.turns_topic,
                until=lambda rs: sum(r["type"] == "session.end" for r in rs) == everything,
            )
        )
        turn_ends = [r for r in turns if r["type"] == "turn.end"]
        truth = {
            "sessions_started": everything,
            "turns": len(turn_ends),
            "words": sum(words(r["transcript"]) for r in turn_ends),
            "sessions_ended.complete": sum(r.get("status") == "complete" for r in turns),
        }

        def counted() -> dict[str, float]:
            counts = stats()["total"]["counts"]
            return {name: counts.get(name, 0) for name in truth}

        wait_for(lambda: counted() == truth, 60, f"the counters to reach {truth} after the restart")
        time.sleep(1.5)  # anything counted twice would show by now
        assert counted() == truth
        # The store: one row per (session, turn), each with the topic's text, none missing.
        texts = {(r["session_id"], r["turn"]): r["transcript"] for r in turn_ends}
        rows = analytics.query("SELECT session_id, turn, transcript FROM turns")
        assert {(r["session_id"], int(r["turn"])): r["transcript"] for r in rows} == texts and len(rows) == len(texts)
    finally:
        analytics.terminate()
        worker.terminate()


async def read_topic_letters(config: Settings, quiet_s: float = 2.0) -> list[dict[str, Any]]:
    """The dead-letter topic until nothing new for ``quiet_s`` (keys may be absent: not read_topic)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        config.dead_letter_topic,
        bootstrap_servers=config.bootstrap_servers,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        quiet_since = time.monotonic()
        async with asyncio.timeout(60):
            while time.monotonic() - quiet_since < quiet_s:
                batch = await consumer.getmany(timeout_ms=200)
                for items in batch.values():
                    records += [orjson.loads(item.value) for item in items if item.value is not None]
                    quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return records
