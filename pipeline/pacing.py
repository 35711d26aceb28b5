"""Realtime pacing of audio towards an STT WebSocket (sans-I/O).

The STT service wants audio in small frames at the pace it was spoken: pushing a backlog at once
overloads its buffer (a 5xx), and stopping altogether makes it wait instead of hearing silence.
:class:`Pacer` turns audio pushed in arbitrary pieces into exact frames and says, for an injected
``now``, which frames to send.

Schedule: an absolute audio clock. ``t0`` is the time of the first send; the frame that starts after
``B`` bytes have been sent (audio and silence alike) is *due* at ``t0 + B / bytes_per_ms / 1000`` and
may be sent at most ``max_lead_ms`` before that. With full frames this is ``t0 + k * frame_ms / 1000``
for frame ``k``; the clock counts bytes, so it cannot drift however long the session runs.

Invariants at every send: the audio clock is at most ``max_lead_ms`` ahead of ``now``, and at most
``silence_budget_ms`` behind it (for silence fill: at most the budget or one frame, whichever is
longer). Time the clock lost beyond that is never caught up in a burst: ``t0`` is moved later instead
(a *rebase*). In detail:

- A backlog is released at realtime plus the lead, never as a burst.
- Starved (no complete frame queued) while the input is live (the producer is quiet, the partition is
  neither lagging nor paused): once the next due time is ``silence_budget_ms`` or more in the past,
  the pacer sends a held partial frame first (the end of what was said), then fills silence up to
  ``now`` (never ahead) and keeps filling in step with the clock until audio comes back. Audio that
  arrives within the budget is caught up, absorbing jitter.
- Starved while the input is not live (the worker is behind or paused): nothing is sent or filled; on
  the next poll that can send again, ``t0`` is rebased so the next frame is due no earlier than
  ``now``: there is no catch-up of the lost time.
- A poll that comes late (the caller did not wake up in time) is treated alike: the clock is rebased
  so it lags ``now`` by no more than the invariant allows.

:meth:`Pacer.poll` returns :class:`Frame` values, which say whether each frame is audio or silence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

_MIN_FRAME_MS = 50.0
_MAX_FRAME_MS = 200.0
_FRAME_SIZE_TOLERANCE_MS = 1.0
# Slack for float rounding in ``t0 + bytes / rate`` (1 µs is above the rounding error of unix times), so
# that polling exactly at a time returned by ``next_wakeup`` always makes progress.
_EPSILON_S = 1e-6


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame to send on the STT socket.

    ``data`` is ``frame_bytes`` long, except for the final frame after :meth:`Pacer.finish`, which may
    be shorter. ``silence`` is True for a silence fill frame (``data`` is the pacer's ``silence_frame``)
    and False for audio from :meth:`Pacer.push`.
    """

    data: bytes
    silence: bool


class Pacer:
    """Decides what audio to send to the STT socket and when; see the module docstring.

    Drive it with :meth:`push` (audio in the STT encoding), :meth:`poll` (what to send now) and
    :meth:`next_wakeup` (when to poll next); call :meth:`finish` at session end and poll until
    :attr:`drained`.
    """

    def __init__(
        self,
        *,
        frame_bytes: int,
        frame_ms: float = 100.0,
        max_lead_ms: float = 300.0,
        silence_budget_ms: float = 400.0,
        silence_frame: bytes,
        bytes_per_ms: float,
    ) -> None:
        """Create a pacer.

        :param frame_bytes: bytes per frame; must hold ``frame_ms`` of audio (to within 1 ms, which
            allows rounding to whole samples).
        :param frame_ms: frame duration, from 50 to 200 ms.
        :param max_lead_ms: how far the audio clock may run ahead of the wall clock.
        :param silence_budget_ms: how long a live but starved input may lag before silence is filled.
        :param silence_frame: one frame (``frame_bytes`` long) of encoding-correct silence.
        :param bytes_per_ms: audio bytes per millisecond in the STT encoding.
        :raises ValueError: on any argument out of range or inconsistent with the others.
        """
        if not _MIN_FRAME_MS <= frame_ms <= _MAX_FRAME_MS:
            raise ValueError(f"frame_ms must be within {_MIN_FRAME_MS}-{_MAX_FRAME_MS}, got {frame_ms}")
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        if bytes_per_ms <= 0:
            raise ValueError(f"bytes_per_ms must be positive, got {bytes_per_ms}")
        if abs(frame_bytes / bytes_per_ms - frame_ms) > _FRAME_SIZE_TOLERANCE_MS:
            raise ValueError(
                f"frame_bytes={frame_bytes} at {bytes_per_ms} bytes/ms is "
                f"{frame_bytes / bytes_per_ms} ms, not frame_ms={frame_ms}"
            )
        if max_lead_ms < 0:
            raise ValueError(f"max_lead_ms must be >= 0, got {max_lead_ms}")
        if silence_budget_ms < 0:
            raise ValueError(f"silence_budget_ms must be >= 0, got {silence_budget_ms}")
        if len(silence_frame) != frame_bytes:
            raise ValueError(f"silence_frame is {len(silence_frame)} bytes, frame_bytes is {frame_bytes}")

        self._frame_bytes = frame_bytes
        self._bytes_per_s = bytes_per_ms * 1000.0
        self._lead_s = max_lead_ms / 1000.0
        self._budget_s = silence_budget_ms / 1000.0
        self._frame_s = frame_bytes / self._bytes_per_s
        self._silence = Frame(bytes(silence_frame), silence=True)

        self._frames: deque[bytes] = deque()
        self._partial = b""
        self._queued_bytes = 0
        self._finished = False

        self._t0: float | None = None
        self._sent_bytes = 0
        self._silence_bytes = 0
        self._input_live = False
        self._stalled = False
        self._filling = False

    # -- inputs ---------------------------------------------------------------------------------------

    def push(self, data: bytes) -> None:
        """Queue audio (already in the STT encoding) of any size; it is cut into exact frames.

        :raises RuntimeError: after :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("push() after finish()")
        if not data:
            return
        if not self._partial and len(data) == self._frame_bytes:  # the usual chunk: one whole frame
            self._frames.append(bytes(data))
            self._queued_bytes += len(data)
            return
        buf = self._partial + data
        whole = len(buf) - len(buf) % self._frame_bytes
        view = memoryview(buf)
        for start in range(0, whole, self._frame_bytes):
            self._frames.append(bytes(view[start : start + self._frame_bytes]))
        self._partial = bytes(view[whole:])
        self._queued_bytes += len(data)

    def finish(self) -> None:
        """Declare that no more audio will come: a held partial frame becomes a short final frame.

        Later polls drain the queue, still paced; :attr:`drained` is True once it is empty. Idempotent.
        """
        if self._finished:
            return
        self._finished = True
        if self._partial:
            self._frames.append(self._partial)
            self._partial = b""

    def cut(self) -> None:
        """Make a held partial frame sendable now, as a short frame, without ending the input.

        Used before a command that must follow exactly the audio pushed so far (a manual ``finalize``).
        """
        if self._partial:
            self._frames.append(self._partial)
            self._partial = b""

    def poll(self, now: float, *, input_live: bool) -> list[Frame]:
        """Return the frames to send at ``now``, in order.

        :param now: the current time in seconds (any monotonic origin, never decreasing).
        :param input_live: whether the producer is live and merely quiet (the partition is neither
            lagging nor paused). Only consulted when no complete frame is queued: it decides between
            filling silence and waiting without filling.
        """
        self._input_live = input_live
        out: list[Frame] = []
        if self._frames:
            if self._t0 is None:
                self._t0 = now
            else:
                self._rebase(now, 0.0 if self._stalled else self._budget_s)
            self._stalled = False
            while self._frames and self._due() - self._lead_s <= now + _EPSILON_S:
                data = self._frames.popleft()
                self._queued_bytes -= len(data)
                self._sent_bytes += len(data)
                self._filling = False
                out.append(Frame(data, silence=False))
            return out

        if self._t0 is None or self._finished:
            return out
        if not input_live:
            self._stalled = True
            self._filling = False
            return out
        if self._stalled:
            self._rebase(now, 0.0)
            self._stalled = False
        if not self._filling and now + _EPSILON_S >= self._due() + self._budget_s:
            self._filling = True
            if self._partial:
                # The producer went quiet mid-frame: its last audio goes out before any silence, or
                # the silence would cut the speech that ended there.
                data, self._partial = self._partial, b""
                self._queued_bytes -= len(data)
                self._sent_bytes += len(data)
                out.append(Frame(data, silence=False))
                self._rebase(now, self._budget_s)  # a short frame leaves the clock off the frame grid
        if self._filling:
            self._rebase(now, max(self._budget_s, self._frame_s))
            while self._due() + self._frame_s <= now + _EPSILON_S:
                self._sent_bytes += self._frame_bytes
                self._silence_bytes += self._frame_bytes
                out.append(self._silence)
        return out

    def next_wakeup(self, now: float) -> float | None:
        """The absolute time at which :meth:`poll` should next be called, never earlier than ``now``.

        That is the time the next queued frame may be sent (its due time minus the lead), or, when
        starved and the last poll said the input is live, the time silence filling starts or the next
        silence frame is due. None if nothing can happen until more input arrives (or when drained).
        """
        if self._frames:
            if self._t0 is None:
                return now
            return max(now, self._due() - self._lead_s)
        if self._t0 is None or self._finished or not self._input_live:
            return None
        if self._filling:
            return max(now, self._due() + self._frame_s)
        return max(now, self._due() + self._budget_s)

    # -- observations ---------------------------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Audio bytes pushed but not yet sent, including a held partial frame."""
        return self._queued_bytes

    @property
    def sent_audio_ms(self) -> float:
        """Milliseconds of audio sent so far, silence included."""
        return self._sent_bytes / self._bytes_per_s * 1000.0

    @property
    def silence_ms_sent(self) -> float:
        """Milliseconds of silence fill sent so far."""
        return self._silence_bytes / self._bytes_per_s * 1000.0

    @property
    def drained(self) -> bool:
        """True once :meth:`finish` was called and every queued byte has been returned by :meth:`poll`."""
        return self._finished and not self._frames

    def lead_ms(self, now: float) -> float:
        """Audio clock minus wall clock, in ms (negative when behind); 0.0 before the first send."""
        if self._t0 is None:
            return 0.0
        return (self._due() - now) * 1000.0

    # -- internals ------------------------------------------------------------------------------------

    def _due(self) -> float:
        """Due time of the next frame: where the audio clock stands."""
        assert self._t0 is not None
        return self._t0 + self._sent_bytes / self._bytes_per_s

    def _rebase(self, now: float, max_lag_s: float) -> None:
        """Move ``t0`` later, if needed, so that the next frame is due no earlier than ``now - max_lag_s``."""
        assert self._t0 is not None
        self._t0 = max(self._t0, now - max_lag_s - self._sent_bytes / self._bytes_per_s)
