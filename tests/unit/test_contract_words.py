"""The optional `words`, `duration_ms` and `language` of turn events: contract type and JSON Schema agree."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.contract import TurnRecord, WordTiming
from pipeline.errors import ContractError
from pipeline.schemas import validate

ms = st.floats(0, 1e7, allow_nan=False, allow_infinity=False)
words = st.lists(
    st.tuples(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1), ms, ms).map(
        lambda t: WordTiming(t[0], min(t[1], t[2]), max(t[1], t[2]))
    ),
    max_size=5,
)


@given(st.sampled_from(["turn.update", "turn.eager_end", "turn.end"]), words, st.none() | ms, st.none() | st.just("en"))
def test_round_trip_and_schema(
    kind: Any, timed: list[WordTiming], duration: float | None, language: str | None
) -> None:
    record = TurnRecord(
        "s", 3, kind, "manual", "r", 10.0, 1, turn=0, transcript="x", words=tuple(timed), duration_ms=duration,
        language=language,
    )  # fmt: skip
    validate("turn", record.to_dict())
    assert TurnRecord.from_json(record.to_json()) == record


BASE: dict[str, Any] = {
    "session_id": "s", "seq": 1, "type": "turn.end", "endpoint": "manual", "request_id": "r", "audio_ms": 5,
    "at": 1, "turn": 0, "transcript": "Hi",
}  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"type": "turn.start", "transcript": None, "words": []},  # only on events that carry text
        {"type": "session.start", "turn": None, "transcript": None, "language": "en"},
        {"type": "turn.resume", "transcript": None, "duration_ms": 1.0},
        {"words": [{"word": "Hi", "start_ms": 1, "end_ms": 2, "score": 1}]},
        {"words": [{"word": "", "start_ms": 1, "end_ms": 2}]},
        {"words": [{"word": "Hi", "start_ms": -1, "end_ms": 2}]},
        {"words": {"word": "Hi", "start_ms": 1, "end_ms": 2}},
        {"duration_ms": -1},
        {"language": ""},
    ],
)
def test_both_the_type_and_the_schema_refuse(change: dict[str, Any]) -> None:
    record = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(jsonschema.ValidationError):
        validate("turn", record)
    with pytest.raises(ContractError):
        TurnRecord.from_json(record)


def test_a_word_ending_before_it_starts_is_refused_by_the_type() -> None:
    with pytest.raises(ContractError, match="before"):
        TurnRecord.from_json({**BASE, "words": [{"word": "Hi", "start_ms": 3, "end_ms": 2}]})
