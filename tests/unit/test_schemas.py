"""Tests of the wire contract: the JSON Schemas in ``schemas/``, :mod:`pipeline.schemas` and AsyncAPI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urldefrag

import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError

from pipeline.records import REASONS
from pipeline.schemas import SCHEMA_DIR, SCHEMA_FILES, SchemaKind, load_schema, validate, validator

AT = 1_767_225_600_000

TURN_BASE: dict[str, Any] = {
    "session_id": "call-42",
    "seq": 0,
    "endpoint": "auto",
    "request_id": "req-1",
    "audio_ms": 1200.5,
    "at": AT,
}
ERROR = {
    "status_code": 429,
    "title": "Too many requests",
    "message": "Concurrency limit reached",
    "error_code": "concurrency_limited",
    "retryable": False,
}
VALID_TURN_EVENTS: dict[str, dict[str, Any]] = {
    "session.start": {**TURN_BASE, "type": "session.start", "request_id": None, "audio_ms": 0},
    "turn.start": {**TURN_BASE, "type": "turn.start", "turn": 0},
    "turn.update": {**TURN_BASE, "type": "turn.update", "turn": 0, "transcript": " Hello, "},
    "turn.eager_end": {**TURN_BASE, "type": "turn.eager_end", "turn": 1, "transcript": "Hi"},
    "turn.resume": {**TURN_BASE, "type": "turn.resume", "turn": 1},
    "turn.end": {**TURN_BASE, "type": "turn.end", "turn": 1, "transcript": ""},
    "session.error": {**TURN_BASE, "type": "session.error", "error": ERROR},
    "session.end": {**TURN_BASE, "type": "session.end", "status": "truncated", "endpoint": "manual"},
}
VALID_TRANSCRIPTS = [
    {
        "kind": "turn",
        "session_id": "call-42",
        "seq": 0,
        "turn": 0,
        "transcript": "Insert",
        "status": "complete",
        "audio_ms": 900,
        "at": AT,
    },
    {
        "kind": "session",
        "session_id": "call-42",
        "seq": 2,
        "turn": 2,
        "transcript": "Inserting spaces ",
        "status": "truncated",
        "audio_ms": 2000.25,
        "at": AT,
    },
]
VALID_DEAD_LETTER: dict[str, Any] = {
    "reason": "partial_sample",
    "detail": "3 bytes is not a whole number of pcm_s16le samples",
    "session_id": None,
    "source": {"topic": "stt.audio", "partition": 0, "offset": 17, "timestamp": None},
    "headers": {"type": "audio", "seq": "4", "garbage": None},
    "value_b64": "AAEC",
    "value_size": 3,
    "at": AT,
}
VALID_CHECKPOINT: dict[str, Any] = {
    "session_id": "call-42",
    "status": "open",
    "resume_offset": 1210,
    "next_seq": 17,
    "next_turn": 3,
    "audio_ms": 41200,
    "close_offset": None,
    "endpoint": "auto",
    "encoding": "pcm_mulaw",
    "sample_rate": 8000,
    "at": AT,
    "next_input_seq": 400,
    "next_transcript_seq": 3,
    "transcript": "Hello there. How are you?",
    "channels": 1,
    "model": "ink-2",
    "language": None,
}
VALID_AUDIO_HEADERS: list[dict[str, str]] = [
    {"type": "audio", "seq": "0", "encoding": "pcm_s16le", "sample_rate": "16000"},
    {
        "type": "audio",
        "seq": "12",
        "encoding": "pcm_f32le",
        "sample_rate": "48000",
        "endpoint": "manual",
        "model": "ink-whisper",
        "language": "de",
        "channels": "2",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    },
    {"type": "finalize", "seq": "3"},
    {"type": "end", "seq": "4", "encoding": "pcm_s16le"},
]


def without(record: dict[str, Any], key: str) -> dict[str, Any]:
    out = copy.deepcopy(record)
    del out[key]
    return out


def with_(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(record)
    out.update(changes)
    return out


def invalid(kind: SchemaKind, record: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate(kind, record)


# -- loading -------------------------------------------------------------------------------------------


def test_every_kind_has_a_schema_file_that_is_a_valid_2020_12_schema() -> None:
    assert set(SCHEMA_FILES) == set(get_args(SchemaKind))
    for kind, name in SCHEMA_FILES.items():
        assert (SCHEMA_DIR / name).is_file()
        schema = load_schema(kind)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)


def test_packaged_schemas_are_the_repository_schemas() -> None:
    import pipeline

    assert Path(pipeline.__file__).resolve().parent / "contract_schemas" == SCHEMA_DIR
    source = Path(__file__).resolve().parents[2] / "schemas"
    assert sorted(p.name for p in SCHEMA_DIR.iterdir()) == sorted(p.name for p in source.iterdir())
    for path in source.iterdir():
        assert (SCHEMA_DIR / path.name).read_bytes() == path.read_bytes(), f"copy schemas/{path.name} to {SCHEMA_DIR}"


def test_validators_are_cached() -> None:
    assert validator("turn") is validator("turn")
    assert validator("turn") is not validator("transcript")


@pytest.mark.parametrize("kind", list(SCHEMA_FILES))
def test_the_schemas_own_examples_are_valid(kind: SchemaKind) -> None:
    examples = load_schema(kind)["examples"]
    assert examples
    for example in examples:
        validate(kind, example)


# -- stt.turns -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(VALID_TURN_EVENTS))
def test_valid_turn_events(kind: str) -> None:
    validate("turn", VALID_TURN_EVENTS[kind])


@pytest.mark.parametrize("kind", ["turn.start", "turn.update", "turn.eager_end", "turn.resume", "turn.end"])
def test_turn_events_require_turn(kind: str) -> None:
    invalid("turn", without(VALID_TURN_EVENTS[kind], "turn"))


@pytest.mark.parametrize("kind", ["turn.update", "turn.eager_end", "turn.end"])
def test_text_events_require_transcript(kind: str) -> None:
    invalid("turn", without(VALID_TURN_EVENTS[kind], "transcript"))


@pytest.mark.parametrize("kind", ["session.start", "session.error", "session.end"])
def test_session_events_carry_no_turn(kind: str) -> None:
    invalid("turn", with_(VALID_TURN_EVENTS[kind], turn=0))


@pytest.mark.parametrize("kind", ["session.start", "turn.start", "turn.resume", "session.error", "session.end"])
def test_only_text_events_carry_a_transcript(kind: str) -> None:
    invalid("turn", with_(VALID_TURN_EVENTS[kind], transcript="x"))


def test_session_error_requires_error_and_only_it_has_one() -> None:
    invalid("turn", without(VALID_TURN_EVENTS["session.error"], "error"))
    invalid("turn", with_(VALID_TURN_EVENTS["turn.end"], error=ERROR))


@pytest.mark.parametrize("key", ["status_code", "title", "message", "retryable"])
def test_error_fields_are_required(key: str) -> None:
    err = {k: v for k, v in ERROR.items() if k != key}
    invalid("turn", with_(VALID_TURN_EVENTS["session.error"], error=err))


def test_error_shape() -> None:
    base = VALID_TURN_EVENTS["session.error"]
    validate("turn", with_(base, error={**ERROR, "status_code": None, "error_code": None}))
    validate("turn", with_(base, error={k: v for k, v in ERROR.items() if k != "error_code"}))
    invalid("turn", with_(base, error={**ERROR, "retryable": "no"}))
    invalid("turn", with_(base, error={**ERROR, "doc_url": "https://example.invalid"}))


def test_session_end_requires_status_and_only_it_has_one() -> None:
    invalid("turn", without(VALID_TURN_EVENTS["session.end"], "status"))
    invalid("turn", with_(VALID_TURN_EVENTS["session.end"], status="aborted"))
    invalid("turn", with_(VALID_TURN_EVENTS["turn.end"], status="complete"))


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "turn.finish"},
        {"type": "error"},
        {"extra": 1},
        {"seq": -1},
        {"seq": 1.5},
        {"turn": -1},
        {"turn": "0"},
        {"transcript": None},
        {"endpoint": "batch"},
        {"request_id": 7},
        {"audio_ms": -0.1},
        {"at": 1.5},
        {"at": "2026-01-01T00:00:00Z"},
        {"session_id": ""},
    ],
)
def test_invalid_turn_event_fields(changes: dict[str, Any]) -> None:
    invalid("turn", with_(VALID_TURN_EVENTS["turn.update"], **changes))


@pytest.mark.parametrize("key", ["session_id", "seq", "type", "endpoint", "request_id", "audio_ms", "at"])
def test_turn_event_common_fields_are_required(key: str) -> None:
    invalid("turn", without(VALID_TURN_EVENTS["turn.update"], key))


# -- stt.transcripts -----------------------------------------------------------------------------------


def test_valid_transcripts() -> None:
    for record in VALID_TRANSCRIPTS:
        validate("transcript", record)


@pytest.mark.parametrize("key", ["kind", "session_id", "seq", "turn", "transcript", "status", "audio_ms", "at"])
def test_transcript_fields_are_required(key: str) -> None:
    invalid("transcript", without(VALID_TRANSCRIPTS[0], key))


@pytest.mark.parametrize(
    "changes",
    [{"kind": "utterance"}, {"status": "open"}, {"extra": True}, {"turn": -1}, {"transcript": 5}, {"seq": -1}],
)
def test_invalid_transcript_fields(changes: dict[str, Any]) -> None:
    invalid("transcript", with_(VALID_TRANSCRIPTS[1], **changes))


# -- stt.dead-letter -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", REASONS)
def test_valid_dead_letters(reason: str) -> None:
    validate("dead_letter", with_(VALID_DEAD_LETTER, reason=reason, session_id="call-42"))


def test_the_dead_letter_schema_lists_every_reason() -> None:
    reason = load_schema("dead_letter")["properties"]["reason"]
    assert reason["examples"] == list(REASONS)
    for code in REASONS:
        assert f"{code}:" in reason["description"]


def test_truncated_dead_letter() -> None:
    truncated = with_(
        VALID_DEAD_LETTER,
        value_size=900_000,
        value_truncated=True,
        value_sha256="ab" * 32,
        headers_truncated=True,
    )
    validate("dead_letter", truncated)
    invalid("dead_letter", without(truncated, "value_sha256"))
    invalid("dead_letter", without(truncated, "value_truncated"))
    invalid("dead_letter", with_(truncated, value_truncated=False))
    invalid("dead_letter", with_(truncated, headers_truncated=False))
    invalid("dead_letter", with_(truncated, value_sha256="AB" * 32))
    invalid("dead_letter", with_(truncated, value_sha256="ab" * 31))


@pytest.mark.parametrize("value_b64", ["", "AA==", "AAA=", "AAEC", "+/+/"])
def test_dead_letter_base64_accepted(value_b64: str) -> None:
    validate("dead_letter", with_(VALID_DEAD_LETTER, value_b64=value_b64))


@pytest.mark.parametrize(
    "changes",
    [
        {"reason": "Bad Header"},
        {"reason": ""},
        {"value_b64": "AAE"},
        {"value_b64": "AA=A"},
        {"value_b64": "AA-_"},
        {"headers": {"type": 1}},
        {"headers": ["type"]},
        {"source": {"topic": "stt.audio", "partition": 0, "offset": 17}},
        {"source": {"topic": "stt.audio", "partition": -1, "offset": 17, "timestamp": None}},
        {"session_id": 3},
        {"session_id": "s" * 1025},
        {"detail": "d" * 1025},
        {"headers": {"h" * 1025: "x"}},
        {"headers": {"h": "x" * 1025}},
        {"value_size": -1},
        {"value_size": "3"},
        {"extra": "x"},
    ],
)
def test_invalid_dead_letters(changes: dict[str, Any]) -> None:
    invalid("dead_letter", with_(VALID_DEAD_LETTER, **changes))


@pytest.mark.parametrize(
    "key", ["reason", "detail", "session_id", "source", "headers", "value_b64", "value_size", "at"]
)
def test_dead_letter_fields_are_required(key: str) -> None:
    invalid("dead_letter", without(VALID_DEAD_LETTER, key))


# -- stt.sessions --------------------------------------------------------------------------------------


def test_valid_checkpoints() -> None:
    validate("checkpoint", VALID_CHECKPOINT)
    validate("checkpoint", with_(VALID_CHECKPOINT, status="complete", close_offset=1300, endpoint="manual"))


@pytest.mark.parametrize("key", list(VALID_CHECKPOINT))
def test_checkpoint_fields_are_required(key: str) -> None:
    invalid("checkpoint", without(VALID_CHECKPOINT, key))


def test_provider_separates_is_an_optional_boolean() -> None:
    for known in (True, False):
        validate("checkpoint", with_(VALID_CHECKPOINT, provider_separates=known))
    for bad in (None, "true", 1):
        invalid("checkpoint", with_(VALID_CHECKPOINT, provider_separates=bad))


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "closed"},
        {"encoding": "pcm_u8"},
        {"sample_rate": 0},
        {"sample_rate": "16000"},
        {"close_offset": -1},
        {"resume_offset": None},
        {"next_seq": -1},
        {"extra": 0},
    ],
)
def test_invalid_checkpoints(changes: dict[str, Any]) -> None:
    invalid("checkpoint", with_(VALID_CHECKPOINT, **changes))


# -- stt.audio headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", VALID_AUDIO_HEADERS)
def test_valid_audio_headers(headers: dict[str, str]) -> None:
    validate("audio_headers", headers)


@pytest.mark.parametrize(
    "headers",
    [
        {"type": "audio", "seq": "0", "sample_rate": "16000"},
        {"type": "audio", "seq": "0", "encoding": "pcm_s16le"},
        {"type": "audio", "seq": "0", "encoding": "wav", "sample_rate": "16000"},
        {"type": "audio", "seq": "0", "encoding": "pcm_s16le", "sample_rate": "16k"},
        {"type": "audio", "seq": "01", "encoding": "pcm_s16le", "sample_rate": "16000"},
        {"type": "audio", "seq": "-1", "encoding": "pcm_s16le", "sample_rate": "16000"},
        {"type": "start", "seq": "0"},
        {"seq": "0"},
        {"type": "end"},
        {"type": "end", "seq": "1", "endpoint": "semi"},
        {"type": "end", "seq": "1", "channels": "0"},
        {"type": "end", "seq": "1", "custom": None},
        {"type": "end", "seq": "1", "custom": "x" * 1025},
        {"type": "end", "seq": "1", "h" * 257: "x"},
        {"type": "end", "seq": "1" * 19},
        {"type": "audio", "seq": "0", "encoding": "pcm_s16le", "sample_rate": "7999"},
        {"type": "audio", "seq": "0", "encoding": "pcm_s16le", "sample_rate": "48001"},
        {"type": "end", "seq": "1", "channels": "9"},
    ],
)
def test_invalid_audio_headers(headers: dict[str, Any]) -> None:
    invalid("audio_headers", headers)


# -- AsyncAPI ------------------------------------------------------------------------------------------


def load_asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((SCHEMA_DIR / "asyncapi.yaml").read_text(encoding="utf-8"))
    return doc


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve_pointer(doc: Any, pointer: str) -> Any:
    node = doc
    for part in pointer.lstrip("/").split("/") if pointer else []:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_asyncapi_parses_and_describes_the_five_topics() -> None:
    doc = load_asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {"stt.audio", "stt.turns", "stt.transcripts", "stt.sessions", "stt.dead-letter"}
    for channel in doc["channels"].values():
        assert channel["bindings"]["kafka"]["topic"] == channel["address"]
        assert channel["messages"]


def test_asyncapi_states_the_delivery_guarantees() -> None:
    channels = {c["address"]: c for c in load_asyncapi()["channels"].values()}
    turns = channels["stt.turns"]["description"]
    assert "exactly once" in turns and "(session_id, seq)" in turns and "read_committed" in turns
    assert "new `seq` values" in turns  # the failover caveat for the open turn's interim events
    for topic in ("stt.transcripts", "stt.sessions", "stt.dead-letter"):
        assert "ransactional" in channels[topic]["description"]
        assert "read_committed" in channels[topic]["description"]
    assert channels["stt.sessions"]["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == ["compact"]


def test_every_asyncapi_ref_resolves() -> None:
    doc = load_asyncapi()
    found = refs(doc)
    assert len(found) > 10
    files: set[str] = set()
    for ref in found:
        target, fragment = urldefrag(ref)
        if target:
            path = (SCHEMA_DIR / target).resolve()
            assert path.is_file(), ref
            files.add(path.name)
            resolve_pointer(json.loads(path.read_text(encoding="utf-8")), fragment)
        else:
            resolve_pointer(doc, fragment)
    assert files == set(SCHEMA_FILES.values())


def test_asyncapi_payloads_are_the_validated_schemas() -> None:
    messages = load_asyncapi()["components"]["messages"]
    assert messages["turnEvent"]["payload"]["$ref"] == "./" + SCHEMA_FILES["turn"]
    assert messages["transcript"]["payload"]["$ref"] == "./" + SCHEMA_FILES["transcript"]
    assert messages["checkpoint"]["payload"]["$ref"] == "./" + SCHEMA_FILES["checkpoint"]
    assert messages["deadLetter"]["payload"]["$ref"] == "./" + SCHEMA_FILES["dead_letter"]
    assert messages["audioRecord"]["headers"]["$ref"] == "./" + SCHEMA_FILES["audio_headers"]


def test_end_at_is_optional_on_a_session_final_and_not_allowed_on_a_turn() -> None:
    session = next(r for r in VALID_TRANSCRIPTS if r["kind"] == "session")
    validate("transcript", with_(session, end_at=1767225603200))
    invalid("transcript", with_(session, end_at=-1))
    turn = next(r for r in VALID_TRANSCRIPTS if r["kind"] == "turn")
    invalid("transcript", with_(turn, end_at=1767225603200))
