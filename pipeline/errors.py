"""The pipeline's own exceptions: one hierarchy under :class:`PipelineError`, and the one retry rule.

- :class:`InputError`: an input record breaks the input contract (dead-lettered; see
  :class:`pipeline.records.Rejected`).
- :class:`ProviderError`: the STT provider refused, failed or went away. Its :attr:`~ProviderError.retryable`
  is the single rule deciding whether a session reconnects or fails.
- :class:`KafkaSetupError`, :class:`DeliveryError`: the broker side (topics, transactions).
- :class:`ContractError`: a record does not match the wire contract (:mod:`pipeline.contract`).
- :class:`IllegalTransition`: a state machine was asked for a transition it does not have.
- :class:`ClientError`: a call of the client library (:mod:`pipeline.client`) that would publish input
  the worker rejects; raised before anything is sent.

Messages never carry provider-supplied text: that text stays in attributes, for records to scrub.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

CLOSE_POLICY_VIOLATION = 1008
"""WebSocket close code a server sends when the client broke its rules: the 4xx of WebSocket closes."""

_MIN_STATUS, _MAX_STATUS = 100, 599


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class InputError(PipelineError, ValueError):
    """An input record that cannot be processed (it goes to the dead-letter topic)."""


class ContractError(PipelineError, ValueError):
    """A record does not match its wire contract (missing field, wrong type, unknown value)."""


class ClientError(PipelineError, ValueError):
    """A client-library call that would break the input contract (bad chunk, format, key); nothing was sent."""


class KafkaSetupError(PipelineError, RuntimeError):
    """The broker side cannot be set up as configured (topics missing, wrong partitioning, ...)."""


class DeliveryError(PipelineError, RuntimeError):
    """Records cannot be delivered by this worker any more (e.g. another worker took the partition)."""


class IllegalTransition(PipelineError, RuntimeError):
    """A state machine got an event its current state has no transition for."""

    def __init__(self, machine: str, state: str, event: str) -> None:
        super().__init__(f"{machine}: no transition from state {state!r} on event {event!r}")
        self.machine = machine
        self.state = state
        self.event = event


def is_retryable(status_code: int | None, close_code: int | None = None) -> bool:
    """THE retry rule: reconnect on 5xx, on 429, and on transport loss; fail on any other status.

    ``status_code`` is the provider's HTTP-style status; None means there is none (unreachable,
    handshake failure, abnormal close, an error event without a usable status). Without a status,
    a close with ``close_code`` 1008 (policy violation, the WebSocket form of a 4xx) is not retried;
    every other loss is.
    """
    if status_code is not None:
        return status_code >= 500 or status_code == 429
    return close_code != CLOSE_POLICY_VIOLATION


def parse_status(value: object) -> int | None:
    """A provider status code as an int: ``500``, ``500.0`` and ``"500"`` are 500.

    Anything else (missing, bool, fractional, non-numeric, outside 100..599) is None: no usable status,
    which :func:`is_retryable` treats as transport-level, i.e. retryable. Failing a session for good
    on a status we cannot read would lose it; retrying is bounded by the reconnect budget.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        status = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        status = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 3:
            return None
        status = int(text)
    else:
        return None
    return status if _MIN_STATUS <= status <= _MAX_STATUS else None


class ProviderError(PipelineError):
    """The STT provider refused, failed or was lost. ``retryable`` follows :func:`is_retryable`.

    ``title`` and ``message`` may hold provider text: scrub them before they go into a record.
    ``str()`` shows only the status and close codes.
    """

    def __init__(
        self,
        *,
        status_code: int | None,
        title: str,
        message: str,
        error_code: str | None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(f"STT provider error (status {status_code}, close {close_code})")
        self.status_code = status_code
        self.title = title
        self.message = message
        self.error_code = error_code
        self.close_code = close_code

    @property
    def retryable(self) -> bool:
        return is_retryable(self.status_code, self.close_code)

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> ProviderError:
        """An in-stream ``error`` event (decoded JSON); see :func:`parse_status` for its ``status_code``."""
        title, message, error_code = event.get("title", ""), event.get("message", ""), event.get("error_code")
        return cls(
            status_code=parse_status(event.get("status_code")),
            title=title if isinstance(title, str) else str(title),
            message=message if isinstance(message, str) else str(message),
            error_code=error_code if isinstance(error_code, str) else None,
        )

    @classmethod
    def from_handshake(cls, status: int, body: bytes) -> ProviderError:
        """The HTTP upgrade was answered with ``status`` (not 101) and ``body``."""
        return cls(
            status_code=status,
            title="STT connection refused",
            message=f"STT upgrade refused: {status} {body.decode('utf-8', 'replace')}",
            error_code="stt_connect_failed",
        )

    @classmethod
    def transport(cls, reason: str) -> ProviderError:
        """The socket could not be opened: unreachable, timed out, or a broken handshake."""
        return cls(
            status_code=None,
            title="STT connection refused",
            message=f"STT service unreachable: {reason}",
            error_code="stt_connect_failed",
        )

    @classmethod
    def closed(cls, code: int | None, reason: str) -> ProviderError:
        """The socket closed before the session drained (``code`` None: no close frame, abnormal)."""
        return cls(
            status_code=None,
            title="STT connection closed",
            message=f"the STT server closed the connection (code {code}, reason {reason!r}) before the session drained",
            error_code="stt_closed",
            close_code=code,
        )
