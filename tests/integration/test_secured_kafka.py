"""The worker and the tools against the project's own SASL_SSL broker (SCRAM-SHA-512, TLS, ACLs).

The broker (``secured_kafka``) holds exactly the worker's documented ACLs for the user ``stt-worker`` on the
worker's default topics, group and transactional-id prefix (infra/kafka/kafka.sh). Checked here: a session
end to end with exact finals, transactions and checkpoints; a plaintext client refused; a wrong password
and a missing ACL each failing with a clear message and exit 2; the password never in any output.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

from pipeline.emulator.engines.tones import script_text, synthesize
from pipeline.kafka.checkpoints import load_checkpoints
from pipeline.kafka.clients import kafka_options
from pipeline.kafka.topics import ensure_topics
from pipeline.settings import Settings
from pipeline.tools.produce import produce_audio
from pipeline.worker import Worker
from tests.support.emulator import EmulatorThread, running_emulator
from tests.support.kafka import KafkaBroker
from tests.support.scripts import read_topic

pytestmark = pytest.mark.kafka
STT_PIPELINE = str(Path(sys.executable).with_name("stt-pipeline"))


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator() as emu:
        yield emu


def secured_settings(broker: KafkaBroker, **changes: Any) -> Settings:
    return Settings.load(env={**broker.client_env(), "CARTESIA_API_KEY": "test-key"}).replace(**changes)


def run_cli(env: dict[str, str], *argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STT_", "KAFKA_", "CARTESIA_"))}
    base["STT_HTTP_PORT"] = "0"  # no HTTP server: these runs are about Kafka, and tests bind loopback only
    return subprocess.run(
        [STT_PIPELINE, *argv], env={**base, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


async def test_worker_end_to_end_over_sasl_ssl(secured_kafka: KafkaBroker, emulator: EmulatorThread) -> None:
    settings = secured_settings(secured_kafka, stt_base_url=emulator.base_url, commit_interval_ms=200)
    assert settings.security_protocol == "SASL_SSL" and settings.sasl_username == "stt-worker"
    stop = asyncio.Event()
    worker = Worker(settings)
    task = asyncio.create_task(worker.run(stop))
    try:
        script: list[str | int] = ["Hello secure world.", 600, "Second turn here?"]
        pcm = synthesize(script, 16000, "pcm_s16le")
        session = f"secure-{random.randrange(10**6)}"
        await produce_audio(
            settings, settings.audio_topic, session, pcm, encoding="pcm_s16le", sample_rate=16000, realtime=False
        )
        records = await read_topic(
            settings,
            settings.transcripts_topic,
            until=lambda rs: any(r["kind"] == "session" and r["session_id"] == session for r in rs),
        )
        final = next(r for r in records if r["kind"] == "session" and r["session_id"] == session)
        assert final["status"] == "complete"
        assert final["transcript"] == script_text(script)
        # Checkpoints went through the same transactions: the ended session's tombstone is committed.
        partitions = list(range(secured_kafka.topic_partitions))
        loaded = await load_checkpoints(settings, settings.sessions_topic, partitions)
        assert all(session not in by_session for by_session in loaded.values())
        counters = worker.snapshot().counters
        assert counters.transactions > 0 and counters.transaction_failures == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_a_plaintext_client_is_refused(secured_kafka: KafkaBroker) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=secured_kafka.bootstrap, request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError):
        await consumer.start()
    await consumer.stop()


def test_wrong_password_fails_clearly_and_never_shows(secured_kafka: KafkaBroker) -> None:
    env = {**secured_kafka.client_env(), "KAFKA_SASL_PASSWORD": "wrong-password-5d1e", "CARTESIA_API_KEY": "k"}
    done = run_cli(env, "worker")
    assert done.returncode == 2, done.stderr
    assert f"Kafka authentication failed for 'stt-worker' (SCRAM-SHA-512) at {secured_kafka.bootstrap}" in done.stderr
    assert "wrong-password-5d1e" not in done.stdout + done.stderr
    assert secured_kafka.client_env()["KAFKA_SASL_PASSWORD"] not in done.stdout + done.stderr


def test_a_missing_group_acl_names_the_group(secured_kafka: KafkaBroker) -> None:
    env = {**secured_kafka.client_env(), "STT_GROUP_ID": "not-granted", "CARTESIA_API_KEY": "k"}
    done = run_cli(env, "worker")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Kafka denied 'stt-worker' (SCRAM-SHA-512) Read on group 'not-granted'" in done.stderr
    assert secured_kafka.client_env()["KAFKA_SASL_PASSWORD"] not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def mtls_kafka() -> Iterator[KafkaBroker]:
    broker = KafkaBroker(security="ssl")
    try:
        yield broker.start()
    finally:
        broker.stop()


async def test_mutual_tls(mtls_kafka: KafkaBroker) -> None:
    env = mtls_kafka.client_env()
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SSL" and "KAFKA_SSL_CERTFILE" in env
    settings = Settings.load(env=env)
    assert await ensure_topics(settings) == []  # the admin client authenticates and sees the topics
    consumer = AIOKafkaConsumer(settings.turns_topic, **kafka_options(settings, "test"))
    await consumer.start()
    try:
        assert consumer.partitions_for_topic(settings.turns_topic) == {0, 1}
    finally:
        await consumer.stop()
    without_cert = {k: v for k, v in env.items() if k not in ("KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")}
    done = run_cli({**without_cert, "CARTESIA_API_KEY": "k"}, "worker")
    assert done.returncode == 2 and "Kafka" in done.stderr, done.stderr[-2000:]


def test_tail_works_over_sasl_ssl(secured_kafka: KafkaBroker) -> None:
    done = run_cli(secured_kafka.client_env(), "tail", "--plain", "--timeout", "2", timeout=60)
    assert done.returncode == 0, done.stderr
    assert secured_kafka.client_env()["KAFKA_SASL_PASSWORD"] not in done.stdout + done.stderr
