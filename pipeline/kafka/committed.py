"""Where a newly assigned input partition starts: its committed offset and the mark committed with it.

The transaction that commits a partition's offset puts the partition's :class:`~pipeline.commit.Mark`
in the commit's metadata: no record it covers needs its dead letter again.
:func:`committed_offsets` reads both from one OffsetFetch answer of the group coordinator, through the
consumer's own coordinator (the call behind ``AIOKafkaConsumer.committed``, which returns the offset
alone): it retries while the coordinator loads or moves, as ``committed`` does. Should aiokafka's
internals change, it falls back to ``committed`` without the mark: dead letters above the committed
offset may then be written again after a crash, nothing is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.commit import Mark

log = logging.getLogger("pipeline.kafka.committed")


@dataclass(frozen=True, slots=True)
class Committed:
    """A partition's committed offset (None: nothing committed) and the mark committed with it."""

    offset: int | None
    mark: Mark | None = None


async def committed_offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, Committed]:
    """The committed offset and mark of each of ``tps`` for the consumer's group."""
    if not tps:
        return {}
    coordinator: Any = getattr(consumer, "_coordinator", None)
    fetch = getattr(coordinator, "fetch_committed_offsets", None)
    if fetch is None:
        log.warning("cannot read the commits' metadata from this aiokafka: dead letters may repeat after a crash")
        return {tp: Committed(await consumer.committed(tp)) for tp in tps}
    found = await fetch(tps)
    result: dict[TopicPartition, Committed] = {}
    for tp in tps:
        entry = found.get(tp)
        if entry is None or entry.offset is None or entry.offset < 0:
            result[tp] = Committed(None)
        else:
            result[tp] = Committed(int(entry.offset), Mark.read(entry.metadata))
    return result
