"""Fuzzing the input contract: :func:`pipeline.records.parse` is total and fast on any record."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.records import REASONS, InputMessage, Rejected, parse

KNOWN = ["type", "seq", "encoding", "sample_rate", "channels", "endpoint", "model", "language"]
SLOW = 0.5  # seconds; parsing is linear, so any record here takes well under a millisecond

# Names: the ones parse reads, arbitrary text (lone surrogates included), and very long ones.
names = (
    st.sampled_from(KNOWN)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
    | st.builds(lambda c, n: c * n, st.characters(exclude_categories=()), st.integers(200, 5000))
)
# Values: arbitrary bytes, plausible text (to get past the first checks), digits of any length.
plausible = st.sampled_from(
    ["audio", "finalize", "end", "0", "1", "16000", "8000", "48000", "2", "auto", "manual", "pcm_s16le", "pcm_mulaw"]
)
values = (
    st.none()
    | st.binary(max_size=40)
    | plausible.map(str.encode)
    | st.builds(lambda d, n: d * n, st.sampled_from([b"0", b"1", b"9"]), st.integers(1, 6000))
    | st.text(max_size=20).map(lambda t: t.encode("utf-8"))
)
keys = st.none() | st.binary(max_size=40) | st.builds(lambda n: b"k" * n, st.integers(0, 700_000))
payloads = st.none() | st.binary(max_size=64) | st.builds(lambda n: b"\0" * n, st.integers(0, 300_000))


def check(key: bytes | None, headers: list[tuple[str, bytes | None]], value: bytes | None) -> None:
    started = time.perf_counter()
    try:
        message = parse(key, headers, value)
    except Rejected as rejected:
        assert rejected.reason in REASONS and rejected.reason != "unparseable"
        assert len(rejected.detail) < 300
    else:
        assert isinstance(message, InputMessage)
    assert time.perf_counter() - started < SLOW


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(key=keys, headers=st.lists(st.tuples(names, values), max_size=12), value=payloads)
def test_parse_returns_a_message_or_rejects_anything(
    key: bytes | None, headers: list[tuple[str, bytes | None]], value: bytes | None
) -> None:
    check(key, headers, value)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["audio", "finalize", "end"]),
    fields=st.dictionaries(st.sampled_from(KNOWN[1:]), values, max_size=7),
    value=st.none() | st.binary(max_size=16),
)
def test_parse_near_valid_records(kind: str, fields: dict[str, bytes | None], value: bytes | None) -> None:
    # Mostly well-formed records with one or more odd fields reach the deeper checks.
    base = {"seq": b"0", "encoding": b"pcm_s16le", "sample_rate": b"16000"}
    check(b"call", [("type", kind.encode()), *{**base, **fields}.items()], value)


@pytest.mark.parametrize(
    "headers",
    [
        [(f"h{i}", b"x" * 1024) for i in range(20_000)],  # ~20 MB of headers, each within the limit
        [("seq", b"9" * 1_000_000)],
        [("type", b"audio"), ("seq", b"0"), ("encoding", b"pcm_s16le"), ("sample_rate", b"1" * 1_000_000)],
        [("\udcff" * 100_000, b"x")],
    ],
)
def test_parse_is_fast_on_huge_records(headers: list[tuple[str, bytes | None]]) -> None:
    check(b"k" * 1_000_000, headers, b"\0" * 10_000_000)
    check(b"call", headers, b"\0" * 10_000_000)
