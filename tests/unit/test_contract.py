"""The typed output records: round trips, schema conformance, the published bytes, strict reading."""

from __future__ import annotations

import dataclasses
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.audio import ENCODINGS
from pipeline.contract import (
    CHECKPOINT_STATUSES,
    SESSION_STATUSES,
    TURN_TYPES,
    Checkpoint,
    DeadLetter,
    DeadLetterSource,
    ProviderErrorInfo,
    TranscriptRecord,
    TurnRecord,
)
from pipeline.errors import ContractError
from pipeline.records import AudioFormat, Rejected, dead_letter
from pipeline.schemas import SchemaKind, load_schema, validate

ints = st.integers(min_value=0, max_value=2**63 - 1)
small = st.integers(min_value=0, max_value=10_000)
numbers = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
texts = st.text(max_size=30)
names = st.text(min_size=1, max_size=20)
endpoints = st.sampled_from(["auto", "manual"])

errors = st.builds(
    ProviderErrorInfo,
    status_code=st.none() | st.integers(min_value=100, max_value=599),
    title=texts,
    message=texts,
    error_code=st.none() | texts,
    retryable=st.booleans(),
)


@st.composite
def turn_records(draw: st.DrawFn) -> TurnRecord:
    kind = draw(st.sampled_from(TURN_TYPES))
    return TurnRecord(
        session_id=draw(names),
        seq=draw(ints),
        type=kind,
        endpoint=draw(endpoints),
        request_id=draw(st.none() | texts),
        audio_ms=draw(numbers),
        at=draw(ints),
        turn=draw(small) if kind.startswith("turn.") else None,
        transcript=draw(texts) if kind in ("turn.update", "turn.eager_end", "turn.end") else None,
        error=draw(errors) if kind == "session.error" else None,
        status=draw(st.sampled_from(SESSION_STATUSES)) if kind == "session.end" else None,
    )


@st.composite
def transcript_records(draw: st.DrawFn) -> TranscriptRecord:
    kind = draw(st.sampled_from(["turn", "session"]))
    return TranscriptRecord(
        kind=kind,  # type: ignore[arg-type]
        session_id=draw(names),
        seq=draw(ints),
        turn=draw(small),
        transcript=draw(texts),
        status=draw(st.sampled_from(SESSION_STATUSES)),
        audio_ms=draw(numbers),
        at=draw(ints),
        end_at=draw(st.none() | ints) if kind == "session" else None,
    )

checkpoints = st.builds(
    Checkpoint,
    session_id=names,
    status=st.sampled_from(CHECKPOINT_STATUSES),
    resume_offset=ints,
    next_seq=ints,
    next_turn=ints,
    next_transcript_seq=ints,
    next_input_seq=ints,
    transcript=texts,
    audio_ms=numbers,
    close_offset=st.none() | ints,
    endpoint=endpoints,
    encoding=st.sampled_from(ENCODINGS),
    sample_rate=st.integers(min_value=1, max_value=384_000),
    channels=st.integers(min_value=1, max_value=8),
    model=texts,
    language=st.none() | texts,
    at=ints,
    provider_separates=st.none() | st.booleans(),
)

dead_letters = st.builds(
    DeadLetter,
    reason=st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
    detail=texts,
    session_id=st.none() | texts,
    source=st.builds(DeadLetterSource, topic=names, partition=small, offset=ints, timestamp=st.none() | ints),
    headers=st.dictionaries(texts, st.none() | texts, max_size=4),
    value_b64=st.binary(max_size=20).map(lambda b: __import__("base64").b64encode(b).decode("ascii")),
    value_size=ints,
    at=ints,
    headers_truncated=st.none() | st.just(True),
).flatmap(
    lambda d: st.one_of(
        st.just(d),
        st.from_regex(r"[0-9a-f]{64}", fullmatch=True).map(
            lambda h: dataclasses.replace(d, value_truncated=True, value_sha256=h)
        ),
    )
)


@given(turn_records())
def test_turn_record_round_trips_and_matches_the_schema(record: TurnRecord) -> None:
    assert TurnRecord.from_json(record.to_json()) == record
    assert TurnRecord.from_json(record.to_json().decode()) == record
    assert TurnRecord.from_json(record.to_dict()) == record
    validate("turn", orjson.loads(record.to_json()))


@given(transcript_records())
def test_transcript_record_round_trips_and_matches_the_schema(record: TranscriptRecord) -> None:
    assert TranscriptRecord.from_json(record.to_json()) == record
    validate("transcript", orjson.loads(record.to_json()))


@given(checkpoints)
def test_checkpoint_round_trips_and_matches_the_schema(record: Checkpoint) -> None:
    assert Checkpoint.from_json(record.to_json()) == record
    validate("checkpoint", orjson.loads(record.to_json()))


@given(dead_letters)
def test_dead_letter_round_trips_and_matches_the_schema(record: DeadLetter) -> None:
    assert DeadLetter.from_json(record.to_json()) == record
    validate("dead_letter", orjson.loads(record.to_json()))


@given(errors)
def test_error_info_round_trips(info: ProviderErrorInfo) -> None:
    assert ProviderErrorInfo.from_json(info.to_json()) == info


@pytest.mark.parametrize(
    ("kind", "record_type"),
    [("turn", TurnRecord), ("transcript", TranscriptRecord), ("checkpoint", Checkpoint), ("dead_letter", DeadLetter)],
)
def test_the_schema_and_the_type_have_the_same_fields_and_the_same_required_ones(
    kind: SchemaKind, record_type: type[Any]
) -> None:
    schema = load_schema(kind)
    fields = dataclasses.fields(record_type)
    assert set(schema["properties"]) == {f.name for f in fields}
    defaulted = {f.name for f in fields if f.default is not dataclasses.MISSING}
    assert set(schema["required"]) == {f.name for f in fields} - defaulted


# -- the published bytes are those of the dict builders they replace ------------------------------


def test_turn_record_bytes_match_the_previous_dict_builder() -> None:
    # the key order and the left-out None fields of Session._emit_turn before records were typed
    head = b'{"session_id":"s","seq":3,"type":"%s","endpoint":"auto","request_id":%s,"audio_ms":12.5,"at":9'
    record = TurnRecord("s", 3, "turn.end", "auto", None, 12.5, 9, turn=1, transcript=" Hi")
    assert record.to_json() == head % (b"turn.end", b"null") + b',"turn":1,"transcript":" Hi"}'
    start = TurnRecord("s", 3, "session.start", "auto", None, 12.5, 9)
    assert start.to_json() == head % (b"session.start", b"null") + b"}"
    error = ProviderErrorInfo(None, "Input gap", "expected seq 1, got 3", "seq_gap", False)
    gap = TurnRecord("s", 3, "session.error", "auto", "r", 12.5, 9, error=error)
    assert gap.to_json() == head % (b"session.error", b'"r"') + (
        b',"error":{"status_code":null,"title":"Input gap","message":"expected seq 1, got 3",'
        b'"error_code":"seq_gap","retryable":false}}'
    )
    end = TurnRecord("s", 3, "session.end", "auto", "r", 12.5, 9, status="complete")
    assert end.to_json() == head % (b"session.end", b'"r"') + b',"status":"complete"}'


def test_transcript_and_checkpoint_bytes_keep_the_previous_key_order() -> None:
    transcript = TranscriptRecord("session", "s", 2, 2, "Hi there", "truncated", 7.25, 5)
    assert transcript.to_json() == (
        b'{"kind":"session","session_id":"s","seq":2,"turn":2,"transcript":"Hi there",'
        b'"status":"truncated","audio_ms":7.25,"at":5}'
    )
    checkpoint = Checkpoint(
        "s", "open", 7, 4, 1, 1, 2, "First.", 100.0, None, "auto", "pcm_s16le", 16000, 1, "ink-2", None, 5
    )
    assert checkpoint.to_json() == (
        b'{"session_id":"s","status":"open","resume_offset":7,"next_seq":4,"next_turn":1,'
        b'"next_transcript_seq":1,"next_input_seq":2,"transcript":"First.","audio_ms":100.0,'
        b'"close_offset":null,"endpoint":"auto","encoding":"pcm_s16le","sample_rate":16000,"channels":1,'
        b'"model":"ink-2","language":null,"at":5}'
    )
    assert checkpoint.format == AudioFormat("pcm_s16le", 16000, 1, "auto", "ink-2", None)
    # what the session learned of its provider's separators goes last, and only once it is known
    learned = dataclasses.replace(checkpoint, provider_separates=False)
    assert learned.to_json() == checkpoint.to_json()[:-1] + b',"provider_separates":false}'


@pytest.mark.parametrize("value", [None, b"", b"\x00\x01\xff"])
def test_dead_letter_reads_back_what_records_dead_letter_publishes_byte_for_byte(value: bytes | None) -> None:
    built = dead_letter(
        Rejected("bad_header", "missing header `seq`"),
        session_id=None,
        topic="stt.audio",
        partition=1,
        offset=5,
        timestamp=None,
        headers=[("type", b"audio"), ("odd", b"\xff")],
        value=value,
        at=123,
    )
    assert DeadLetter.from_json(built).to_json() == orjson.dumps(built)


# -- strict reading --------------------------------------------------------------------------------

GOOD_TURN: dict[str, Any] = {
    "session_id": "s",
    "seq": 1,
    "type": "turn.update",
    "endpoint": "auto",
    "request_id": None,
    "audio_ms": 0,
    "at": 1,
    "turn": 0,
    "transcript": "x",
}


def test_from_json_reads_an_integer_number_as_float() -> None:
    assert TurnRecord.from_json(GOOD_TURN).audio_ms == 0.0


@pytest.mark.parametrize(
    "change",
    [
        {"seq": None},  # missing (removed below)
        {"seq": True},
        {"seq": -1},
        {"seq": 1.0},
        {"audio_ms": "1"},
        {"audio_ms": -0.5},
        {"type": "turn.sideways"},
        {"endpoint": "both"},
        {"request_id": 5},
        {"session_id": ""},
        {"extra": 1},
        {"turn": None},  # turn.update needs its turn (removed below)
        {"status": "complete"},  # only session.end has a status
        {"error": {"status_code": None, "title": "", "message": "", "retryable": False}},
    ],
)
def test_turn_record_from_json_is_strict(change: dict[str, Any]) -> None:
    data = {**GOOD_TURN, **change}
    for name, value in change.items():
        if value is None:
            del data[name]
    with pytest.raises(ContractError):
        TurnRecord.from_json(data)


@pytest.mark.parametrize("data", [b"not json", b"[1]", "null", b'{"session_id": "s"', b"\xff"])
def test_from_json_rejects_what_is_not_a_json_object(data: bytes | str) -> None:
    for kind in (TurnRecord, TranscriptRecord, Checkpoint, DeadLetter, ProviderErrorInfo):
        with pytest.raises(ContractError):
            kind.from_json(data)


def test_nested_objects_must_be_objects_not_json_text() -> None:
    error = ProviderErrorInfo(500, "t", "m", None, True)
    record = TurnRecord("s", 0, "session.error", "auto", None, 0.0, 1, error=error).to_dict()
    with pytest.raises(ContractError):
        TurnRecord.from_json({**record, "error": error.to_json().decode()})


def test_error_code_may_be_absent_in_an_error_object() -> None:
    info = ProviderErrorInfo.from_json({"status_code": 429, "title": "t", "message": "m", "retryable": True})
    assert info.error_code is None


def test_checkpoint_from_json_is_strict() -> None:
    good = Checkpoint("s", "open", 7, 4, 1, 1, 2, "", 1.0, None, "auto", "pcm_s16le", 16000, 1, "ink-2", None, 5)
    data = good.to_dict()
    assert Checkpoint.from_json(data) == good
    for name, bad in [("encoding", "pcm_u8"), ("status", "closed"), ("sample_rate", 0), ("close_offset", "7")]:
        with pytest.raises(ContractError):
            Checkpoint.from_json({**data, name: bad})
    without = dict(data)
    del without["language"]  # nullable, but required
    with pytest.raises(ContractError):
        Checkpoint.from_json(without)
    assert dataclasses.replace(good, at=0) != good


def test_provider_separates_is_optional_and_boolean_in_the_type_as_in_the_schema() -> None:
    old = Checkpoint("s", "open", 7, 4, 1, 1, 2, "", 1.0, None, "auto", "pcm_s16le", 16000, 1, "ink-2", None, 5)
    data = old.to_dict()
    assert "provider_separates" not in data  # a checkpoint written before the field existed
    assert Checkpoint.from_json(data).provider_separates is None  # reads as: not seen yet
    for known in (True, False):
        record = {**data, "provider_separates": known}
        validate("checkpoint", record)
        assert Checkpoint.from_json(record).provider_separates is known
    for bad in (None, "false", 0, 1):
        record = {**data, "provider_separates": bad}
        with pytest.raises(jsonschema.ValidationError):
            validate("checkpoint", record)
        with pytest.raises(ContractError):
            Checkpoint.from_json(record)


def test_dead_letter_from_json_is_strict() -> None:
    good = DeadLetter("bad_value", "d", None, DeadLetterSource("t", 0, 1, None), {"a": None}, "", 0, 1)
    data = good.to_dict()
    for name, bad in [("headers", {"a": 1}), ("source", {"topic": "t"}), ("value_size", "3"), ("value_truncated", 1)]:
        with pytest.raises(ContractError):
            DeadLetter.from_json({**data, name: bad})


def test_dead_letter_truncation_fields_are_published_only_when_set() -> None:
    source = DeadLetterSource("stt.audio", 0, 1, 2)
    plain = DeadLetter("bad_value", "d", "s", source, {}, "", 0, 1)
    assert list(plain.to_dict()) == [
        "reason", "detail", "session_id", "source", "headers", "value_b64", "value_size", "at"
    ]
    cut = dataclasses.replace(
        plain, value_truncated=True, value_size=10_000_000, value_sha256="ab" * 32, headers_truncated=True
    )
    assert list(cut.to_dict())[-3:] == ["value_truncated", "value_sha256", "headers_truncated"]
    assert DeadLetter.from_json(cut.to_json()) == cut


def test_end_at_is_written_only_when_known_and_refused_on_a_turn_final() -> None:
    final = TranscriptRecord("session", "s", 2, 2, "Hi", "complete", 7.25, 5, end_at=4)
    assert final.to_json().endswith(b',"at":5,"end_at":4}')
    assert TranscriptRecord.from_json(final.to_json()) == final
    turn = {**orjson.loads(final.to_json()), "kind": "turn"}
    with pytest.raises(ContractError, match="end_at"):
        TranscriptRecord.from_json(turn)
