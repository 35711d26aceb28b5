"""pipeline.client against the real broker and a real worker: README's two examples, run as written.

The test reads the fenced code blocks that follow ``<!-- example: producer -->`` and
``<!-- example: consumer -->`` in README.md and runs each with ``python -c`` (a fresh interpreter, as a
reader would), configured only through the environment: ``KAFKA_BOOTSTRAP_SERVERS`` and unique
``STT_*_TOPIC`` names of a worker running here on the tones emulator.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.client import InvalidRecord, TurnsConsumer
from pipeline.contract import TurnRecord
from pipeline.settings import Settings
from tests.support.config import worker_config
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.harness import WorkerHarness

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

README = Path(__file__).resolve().parents[2] / "README.md"


def example(name: str) -> str:
    """The code block right after the ``<!-- example: NAME -->`` marker in README.md."""
    found = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert found is not None, f"README.md has no `<!-- example: {name} -->` followed by a python block"
    return found.group(1)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:
        yield emu


@pytest.fixture
async def worker(kafka_bootstrap: str, emulator: EmulatorThread) -> AsyncIterator[Settings]:
    config = worker_config(kafka_bootstrap, emulator.base_url, topic_partitions=1, commit_interval_ms=100)
    harness = WorkerHarness(config)
    await harness.prepare()
    await harness.start()
    try:
        yield config
    finally:
        await harness.stop()


async def run_example(name: str, config: Settings, timeout_s: float = 90) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STT_", "KAFKA_", "CARTESIA_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=config.bootstrap_servers,
        STT_AUDIO_TOPIC=config.audio_topic,
        STT_TURNS_TOPIC=config.turns_topic,
        STT_TRANSCRIPTS_TOPIC=config.transcripts_topic,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", example(name), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()  # the example process this test started
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_the_readme_examples_run_against_a_worker(worker: Settings) -> None:
    assert await run_example("producer", worker) == ""
    lines = (await run_example("consumer", worker)).splitlines()
    assert lines == ["session call-42 complete ''"]  # one second of silence: no turn, an empty transcript


async def test_turns_consumer_yields_typed_records_and_skips_invalid_ones(worker: Settings) -> None:
    raw = AIOKafkaProducer(bootstrap_servers=worker.bootstrap_servers)
    await raw.start()
    try:
        junk = await (await raw.send(worker.turns_topic, value=b'{"not": "a turn"}', key=b"x"))
    finally:
        await raw.stop()
    await run_example("producer", worker)
    invalid: list[InvalidRecord] = []
    events: list[TurnRecord] = []
    consumer = TurnsConsumer.from_settings(worker, from_beginning=True, on_invalid=invalid.append)
    async with consumer, asyncio.timeout(60):
        async for record in consumer:
            events.append(record)
            if record.type == "session.end":
                break
    assert [(r.topic, r.partition, r.offset) for r in invalid] == [(worker.turns_topic, 0, junk.offset)]
    assert all(isinstance(e, TurnRecord) and e.session_id == "call-42" for e in events)
    assert [e.seq for e in events] == list(range(len(events)))
    assert (events[0].type, events[-1].type, events[-1].status) == ("session.start", "session.end", "complete")
