"""The size budget of output records."""

from __future__ import annotations

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.limits import (
    KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
    RECORD_OVERHEAD,
    Oversized,
    SizeBudget,
    headers_size,
    record_size,
)

BUDGET = SizeBudget.from_configs(1_048_576, {"stt.turns": 100_000, "stt.dead-letter": 2_000_000})


def test_the_limit_is_the_smaller_of_producer_and_topic() -> None:
    assert BUDGET.limit("stt.turns") == 100_000
    assert BUDGET.limit("stt.dead-letter") == 1_048_576
    assert BUDGET.limit("unknown") == min(1_048_576, KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    assert SizeBudget.from_configs(5_000_000, {}).limit("unknown") == KAFKA_DEFAULT_MAX_MESSAGE_BYTES


def test_check_and_fits_at_the_boundary() -> None:
    key = b"call-1"
    room = BUDGET.room("stt.turns", key, headers_size=40)
    assert room == 100_000 - RECORD_OVERHEAD - len(key) - 40
    BUDGET.check("stt.turns", key, b"v" * room, headers_size=40)
    assert BUDGET.fits("stt.turns", key, b"v" * room, headers_size=40)
    assert not BUDGET.fits("stt.turns", key, b"v" * (room + 1), headers_size=40)
    with pytest.raises(Oversized) as caught:
        BUDGET.check("stt.turns", key, b"v" * (room + 1), headers_size=40)
    assert (caught.value.topic, caught.value.size, caught.value.limit) == ("stt.turns", 100_001, 100_000)
    assert "100001" in str(caught.value) and "stt.turns" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_room_is_never_negative() -> None:
    assert BUDGET.room("stt.turns", b"k" * 200_000) == 0


@pytest.mark.parametrize(
    ("max_request_size", "topics"),
    [(0, {}), (RECORD_OVERHEAD, {}), (1_000_000, {"t": -1}), (1_000_000, {"t": True}), (1.5e6, {})],
)
def test_from_configs_rejects_impossible_limits(max_request_size: int, topics: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="size limit"):
        SizeBudget.from_configs(max_request_size, topics)


def test_the_budget_does_not_change_when_the_given_mapping_does() -> None:
    topics = {"t": 10_000}
    budget = SizeBudget.from_configs(1_000_000, topics)
    topics["t"] = 1
    assert budget.limit("t") == 10_000


headers = st.lists(st.tuples(st.text(max_size=30), st.none() | st.binary(max_size=300)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    key=st.none() | st.binary(max_size=300),
    value=st.none() | st.binary(max_size=3000),
    hdrs=headers,
)
def test_the_estimate_is_at_least_what_aiokafka_checks(
    key: bytes | None, value: bytes | None, hdrs: list[tuple[str, bytes | None]]
) -> None:
    # aiokafka raises MessageSizeTooLargeError when its upper-bound estimate exceeds max_request_size.
    assert record_size(key, value, headers_size(hdrs)) >= DefaultRecordBatchBuilder.estimate_size_in_bytes(
        key, value, hdrs
    )


@settings(max_examples=300, deadline=None)
@given(
    max_request_size=st.integers(RECORD_OVERHEAD + 1, 3_000_000),
    topic_limit=st.integers(RECORD_OVERHEAD + 1, 3_000_000),
    key=st.none() | st.binary(max_size=64),
    value_size=st.integers(0, 3_000_000),
    hsize=st.integers(0, 5000),
)
def test_check_fits_and_room_agree(
    max_request_size: int, topic_limit: int, key: bytes | None, value_size: int, hsize: int
) -> None:
    budget = SizeBudget.from_configs(max_request_size, {"t": topic_limit})
    value = bytes(value_size)
    fits = budget.fits("t", key, value, hsize)
    assert budget.limit("t") == min(max_request_size, topic_limit)
    assert fits == (record_size(key, value, hsize) <= min(max_request_size, topic_limit))
    limit = budget.limit("t")
    assert fits == (record_size(key, None, hsize) <= limit and value_size <= budget.room("t", key, hsize))
    if fits:
        budget.check("t", key, value, hsize)
    else:
        with pytest.raises(Oversized):
            budget.check("t", key, value, hsize)
