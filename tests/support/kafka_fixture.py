"""Pytest fixtures for a real Kafka broker (registered via ``pytest_plugins`` in tests/conftest.py).

``kafka_broker`` starts one broker for the whole session on free loopback ports with a temporary data
dir, and stops it (removing the data) at the end. Set ``KAFKA_BOOTSTRAP_SERVERS_TEST=host:port`` to run
against an already-running broker instead; that broker is never started, stopped or restarted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from tests.support.kafka import KafkaBroker

EXTERNAL_BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS_TEST"


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    external = os.environ.get(EXTERNAL_BOOTSTRAP_ENV, "").strip()
    if external:
        yield KafkaBroker.external(external)
        return
    broker = KafkaBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secured_kafka() -> Iterator[KafkaBroker]:
    """A SASL_SSL (SCRAM-SHA-512) broker with ACLs, started only for the tests that ask for it."""
    broker = KafkaBroker(security="sasl_ssl")
    try:
        broker.start()
        asyncio.run(_acls_in_force(broker))
        yield broker
    finally:
        broker.stop()


async def _acls_in_force(broker: KafkaBroker, limit_s: float = 60.0) -> None:
    """Until the ``stt-worker`` user's ACLs are enforced: the authorizer learns ACLs from the metadata
    log a moment after they are created, and an idempotent producer (IdempotentWrite on the cluster)
    is refused until then."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import ClusterAuthorizationFailedError

    from pipeline.kafka.clients import kafka_options
    from pipeline.settings import Settings

    settings = Settings.load(env=broker.client_env())
    deadline = time.monotonic() + limit_s
    while True:
        producer = AIOKafkaProducer(**kafka_options(settings, "probe"), enable_idempotence=True)
        try:
            await producer.start()
            return
        except ClusterAuthorizationFailedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
        finally:
            await producer.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap
