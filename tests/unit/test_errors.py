"""The error hierarchy and the one retry rule for STT provider failures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import (
    ContractError,
    DeliveryError,
    IllegalTransition,
    InputError,
    KafkaSetupError,
    PipelineError,
    ProviderError,
    is_retryable,
    parse_status,
)
from pipeline.kafka.topics import TopicSetupError
from pipeline.kafka.transactions import Fenced
from pipeline.records import Rejected


def test_the_old_names_are_members_of_the_hierarchy() -> None:
    assert issubclass(Rejected, InputError) and issubclass(Rejected, ValueError)
    assert issubclass(Fenced, DeliveryError) and issubclass(Fenced, RuntimeError)
    assert issubclass(TopicSetupError, KafkaSetupError) and issubclass(TopicSetupError, RuntimeError)
    for kind in (InputError, ContractError, KafkaSetupError, DeliveryError, IllegalTransition, ProviderError):
        assert issubclass(kind, PipelineError)
    rejected = Rejected("bad_header", "missing header `seq`")
    assert (rejected.reason, rejected.detail) == ("bad_header", "missing header `seq`")


def test_illegal_transition_names_machine_state_and_event() -> None:
    error = IllegalTransition("partition", "revoked", "commit")
    assert (error.machine, error.state, error.event) == ("partition", "revoked", "commit")
    assert str(error) == "partition: no transition from state 'revoked' on event 'commit'"


@given(st.integers(min_value=100, max_value=599))
def test_one_rule_for_every_status(status: int) -> None:
    expected = status >= 500 or status == 429
    assert is_retryable(status) is expected
    assert ProviderError.from_handshake(status, b"").retryable is expected
    assert ProviderError.from_event({"type": "error", "status_code": status}).retryable is expected
    assert ProviderError.from_event({"type": "error", "status_code": float(status)}).retryable is expected
    assert ProviderError.from_event({"type": "error", "status_code": str(status)}).retryable is expected


def test_transport_loss_is_retryable_but_a_policy_close_is_not() -> None:
    assert ProviderError.transport("ConnectionRefusedError()").retryable
    assert ProviderError.closed(None, "").retryable  # no close frame: abnormal
    assert ProviderError.closed(1011, "internal").retryable
    assert ProviderError.closed(1000, "").retryable  # a clean close before the session drained
    assert not ProviderError.closed(1008, "policy").retryable


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (500, 500),
        (500.0, 500),
        ("429", 429),
        (" 503 ", 503),
        (None, None),
        (True, None),
        (500.5, None),
        (float("nan"), None),
        ("5e2", None),
        ("-500", None),
        ("0500", None),
        (99, None),
        (600, None),
        ([500], None),
    ],
)
def test_parse_status(value: object, status: int | None) -> None:
    assert parse_status(value) == status


def test_from_event_reads_the_provider_fields() -> None:
    error = ProviderError.from_event(
        {
            "type": "error",
            "status_code": 429,
            "title": "Busy",
            "message": "try later",
            "error_code": "concurrency_limited",
        }
    )
    assert (error.status_code, error.title, error.message, error.error_code) == (
        429,
        "Busy",
        "try later",
        "concurrency_limited",
    )
    odd = ProviderError.from_event({"type": "error", "title": 5, "error_code": 7})
    assert (odd.status_code, odd.title, odd.message, odd.error_code, odd.retryable) == (None, "5", "", None, True)


def test_from_handshake_keeps_the_body_as_text() -> None:
    error = ProviderError.from_handshake(401, b'{"error":"bad key"}\xff')
    assert error.status_code == 401 and not error.retryable
    assert error.error_code == "stt_connect_failed"
    assert error.message == 'STT upgrade refused: 401 {"error":"bad key"}\ufffd'


def test_provider_text_stays_out_of_the_exception_message() -> None:
    error = ProviderError.from_event(
        {"type": "error", "status_code": 400, "title": "sk-SECRET", "message": "sk-SECRET"}
    )
    handshake = ProviderError.from_handshake(401, b"sk-SECRET")
    for e in (error, handshake, ProviderError.closed(1008, "sk-SECRET"), ProviderError.transport("sk-SECRET")):
        assert "SECRET" not in str(e) and "SECRET" not in repr(e)
