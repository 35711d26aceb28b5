"""One size budget for every output record: what the producer and each topic's broker config accept.

A record is too large if its estimated size on the wire exceeds ``min(max_request_size, the topic's
max.message.bytes)``. The estimate is conservative: key + value + headers (each header's name, value
and :data:`HEADER_OVERHEAD`) + :data:`RECORD_OVERHEAD`, which covers a record batch header (61 bytes)
and the record's own varints (at most 21 bytes) with a wide margin. It is the *uncompressed* size: the
producer does not compress (a codec would need its worst-case expansion added). A record alone in its
batch is what the budget describes; aiokafka only puts a record that large into a batch of its own
once it exceeds ``max_batch_size``, so topic limits should stay above that (16 KiB by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

RECORD_OVERHEAD: Final = 512
"""Bytes added to every record's key + value + headers: batch header, varints, and margin."""
HEADER_OVERHEAD: Final = 10
"""Bytes added per header: the varint lengths of its name and value."""
KAFKA_DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_588
"""The broker's default ``message.max.bytes``, the limit of a topic whose config was not read."""


class Oversized(ValueError):
    """An output record larger than its topic accepts."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(
            f"a record of about {size} bytes is over the limit of {limit} bytes for topic {topic!r} "
            "(min of the producer's max_request_size and the topic's max.message.bytes)"
        )
        self.topic = topic
        self.size = size
        self.limit = limit


def headers_size(headers: Iterable[tuple[str, bytes | None]]) -> int:
    """The estimated size of record headers: each name and value plus :data:`HEADER_OVERHEAD`."""
    return sum(
        len(name.encode("utf-8", "surrogatepass")) + len(value or b"") + HEADER_OVERHEAD for name, value in headers
    )


def record_size(key: bytes | None, value: bytes | None, headers_size: int = 0) -> int:
    """The estimated size of one record: key + value + ``headers_size`` + :data:`RECORD_OVERHEAD`."""
    return RECORD_OVERHEAD + len(key or b"") + len(value or b"") + headers_size


@dataclass(frozen=True, slots=True)
class SizeBudget:
    """The largest record each output topic accepts; build it with :meth:`from_configs`."""

    max_request_size: int
    topic_limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @classmethod
    def from_configs(cls, max_request_size: int, topic_limits: Mapping[str, int]) -> SizeBudget:
        """The budget from the producer's ``max_request_size`` and each topic's ``max.message.bytes``.

        :raises ValueError: if a limit is not a positive integer, or leaves no room for a record.
        """
        for name, limit in [("max_request_size", max_request_size), *topic_limits.items()]:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= RECORD_OVERHEAD:
                raise ValueError(
                    f"the size limit of {name!r} must be an integer above {RECORD_OVERHEAD}, got {limit!r}"
                )
        return cls(max_request_size, MappingProxyType(dict(topic_limits)))

    def limit(self, topic: str) -> int:
        """The largest record (estimated size) ``topic`` takes from this producer.

        A topic whose config was not read is assumed to have the broker default
        (:data:`KAFKA_DEFAULT_MAX_MESSAGE_BYTES`).
        """
        return min(self.max_request_size, self.topic_limits.get(topic, KAFKA_DEFAULT_MAX_MESSAGE_BYTES))

    def fits(self, topic: str, key: bytes | None, value: bytes | None, headers_size: int = 0) -> bool:
        """Whether the record is within :meth:`limit` of ``topic``."""
        return record_size(key, value, headers_size) <= self.limit(topic)

    def check(self, topic: str, key: bytes | None, value: bytes | None, headers_size: int = 0) -> None:
        """Nothing if the record fits ``topic``.

        :raises Oversized: if it does not.
        """
        size = record_size(key, value, headers_size)
        limit = self.limit(topic)
        if size > limit:
            raise Oversized(topic, size, limit)

    def room(self, topic: str, key: bytes | None, headers_size: int = 0) -> int:
        """The largest value that fits ``topic`` with this key and headers (0 if none does)."""
        return max(0, self.limit(topic) - record_size(key, None, headers_size))
