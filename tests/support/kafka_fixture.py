"""Pytest fixtures for a real Kafka broker (registered via ``pytest_plugins`` in tests/conftest.py).

``kafka_broker`` starts one broker for the whole session on free loopback ports with a temporary data
dir, and stops it (removing the data) at the end. Set ``KAFKA_BOOTSTRAP_SERVERS_TEST=host:port`` to run
against an already-running broker instead; that broker is never started, stopped or restarted.
"""

from __future__ import annotations

import os
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
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap
