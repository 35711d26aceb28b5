"""What the consumer knows about its link to Kafka, per partition: the inputs of a partition's liveness.

aiokafka exposes one public signal, :meth:`AIOKafkaConsumer.last_poll_timestamp`: the time of the last
fetch response for a partition that came back *without error*. A healthy partition gets one about every
``fetch_max_wait_ms`` even when idle. That alone cannot tell "Kafka is back" from "the producers are
back", and it can look fresh while the consumer's connection to the partition's leader is gone, so the
probe also reads whether the consumer currently holds a connection to that leader and knows its group
coordinator. aiokafka has no public API for those two; they are read here, in one place, defensively:
if aiokafka's internals change, the probe falls back on the fetch signal alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True, slots=True)
class LinkReading:
    answered_ms_ago: float  # since the last error-free fetch response (inf: none since assignment)
    connected: bool


def read_link(consumer: AIOKafkaConsumer, tp: TopicPartition) -> LinkReading:
    polled = consumer.last_poll_timestamp(tp)
    ago = float("inf") if polled is None else max(0.0, time.time() * 1000 - polled)
    return LinkReading(ago, _leader_connected(consumer, tp) and _coordinator_known(consumer))


def group_link(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer knows its group coordinator (False while the broker cannot be reached)."""
    return _coordinator_known(consumer)


def _leader_connected(consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    try:
        client: Any = consumer._client
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            return False
        conns: dict[Any, Any] = client._conns
        return any(key[0] == leader and conn.connected() for key, conn in conns.items())
    except Exception:  # aiokafka's internals changed: rely on fetch answers alone
        return True


def _coordinator_known(consumer: AIOKafkaConsumer) -> bool:
    try:
        coordinator: Any = consumer._coordinator
        return coordinator is None or coordinator.coordinator_id is not None
    except Exception:
        return True
