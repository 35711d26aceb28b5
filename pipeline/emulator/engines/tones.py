"""The ``tones`` engine: a deterministic text ↔ audio codec for exact-assertion tests.

:func:`synthesize` turns a script into audio whose words are real signal energy and whose pauses are
digital silence; :class:`TonesRecognizer` decodes that exact text back at any sample rate from 8 kHz to
48 kHz in any protocol encoding. A wrongly declared encoding or rate garbles it, as with the real service.

Codec:

* Alphabet: the 94 printable ASCII characters except space (a-z, A-Z, 0-9, then ``string.punctuation``).
  Symbol ``k`` is two simultaneous sine tones (DTMF-like), low ``LOW_HZ[k // 10]`` (500-1400 Hz) and high
  ``HIGH_HZ[k % 10]`` (1900-2800 Hz), 100 Hz apart within each set, each at amplitude 0.4. Every tone is
  below 3 kHz, so 8 kHz μ-law carries it.
* A symbol lasts ``SYMBOL_MS`` (40 ms) with a 5 ms raised-cosine ramp at each end; a word's symbols are
  contiguous; words are separated by ``WORD_GAP_MS`` (80 ms) of silence.
* A script is one utterance (a string, words separated by whitespace) or a sequence of utterances and pauses
  (ints, in ms, replacing the default gap there). Consecutive utterances without a pause between them are
  ``TURN_PAUSE_MS`` (1200 ms) apart; an explicit pause between utterances is at least ``WORD_GAP_MS``.

Recognition is streaming and independent of how the audio is chunked. In silence, 1 ms frames are
scanned from a fixed starting point; the first frame whose RMS reaches ``ENERGY_THRESHOLD`` is a word
onset. From the onset, each 40 ms symbol window is judged on its central part (8-32 ms, Hann-weighted,
which tolerates onset jitter): if that part is silent the word has ended there; otherwise the power at
the 20 grid frequencies (a small DFT) picks the strongest low and high tone. The symbol is accepted only
if those two tones carry most of the window's energy and clearly beat their neighbours; else it is
dropped, which is how a wrong rate or encoding garbles the text. Only audio from the current symbol
window on is kept.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from functools import cache
from typing import Any, Final, TypeAlias

import numpy as np
from numpy.typing import NDArray

from pipeline.audio import Encoding, encode
from pipeline.emulator.engines.base import EngineEvent, SpeechEnd, SpeechStart, Text

ALPHABET: Final = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
LOW_HZ: Final[tuple[float, ...]] = tuple(500.0 + 100.0 * i for i in range(10))
HIGH_HZ: Final[tuple[float, ...]] = tuple(1900.0 + 100.0 * i for i in range(10))
TONE_AMPLITUDE: Final = 0.4

SYMBOL_MS: Final = 40
RAMP_MS: Final = 5
WORD_GAP_MS: Final = 80
TURN_PAUSE_MS: Final = 1200
MIN_SAMPLE_RATE: Final = 8000

ENERGY_THRESHOLD: Final = 0.02
ONSET_FRAME_MS: Final = 1
ANALYSIS_START_MS: Final = 8
ANALYSIS_END_MS: Final = 32
# A flush may end a word only on audio this far past the symbol boundary (past any onset jitter).
FLUSH_GUARD_MS: Final = 3
MIN_TONE_SHARE: Final = 0.4
MIN_PAIR_SHARE: Final = 0.9
MAX_RIVAL_RATIO: Final = 0.05

Script: TypeAlias = str | Sequence[str | int]

_SYMBOL_INDEX: Final = {ch: k for k, ch in enumerate(ALPHABET)}
_GRID_HZ: Final = np.array(LOW_HZ + HIGH_HZ)


def _samples(ms: float, sample_rate: int) -> int:
    return round(ms * sample_rate / 1000)


def _utterances(script: Script) -> list[str | int]:
    items: Sequence[str | int] = [script] if isinstance(script, str) else script
    for item in items:
        if isinstance(item, int):
            if item < 0:
                raise ValueError(f"pause must be >= 0 ms, got {item}")
        else:
            bad = sorted({ch for ch in item if ch not in _SYMBOL_INDEX and not ch.isspace()})
            if bad:
                raise ValueError(f"characters not in the tones alphabet: {''.join(bad)!r}")
    return list(items)


def script_text(script: Script) -> str:
    """The text a perfect transcription of ``script`` yields: all words joined by single spaces."""
    return " ".join(w for item in _utterances(script) if isinstance(item, str) for w in item.split())


def _layout(script: Script, lead_ms: int, tail_ms: int) -> tuple[list[tuple[float, str]], float]:
    """Each word's start time in ms, and the total duration in ms."""
    words: list[tuple[float, str]] = []
    t = float(lead_ms)
    pause: int | None = None
    for item in _utterances(script):
        if isinstance(item, int):
            pause = item if pause is None else pause + item
            continue
        utterance = item.split()
        if not utterance:
            continue
        if not words:
            t += pause or 0
        else:
            t += TURN_PAUSE_MS if pause is None else max(pause, WORD_GAP_MS)
        pause = None
        for i, word in enumerate(utterance):
            if i:
                t += WORD_GAP_MS
            words.append((t, word))
            t += len(word) * SYMBOL_MS
    return words, t + (pause or 0) + tail_ms


def word_times(script: Script, *, lead_ms: int = 200) -> list[tuple[str, float, float]]:
    """Each word of :func:`synthesize` ``(script, lead_ms=lead_ms)`` with its start and end in ms.

    A word's signal runs from its start for 40 ms per symbol; the recognizer detects its onset on
    1 ms frames, so its word times match these to within a few ms.
    """
    words, _total = _layout(script, lead_ms, 0)
    return [(word, start, start + len(word) * SYMBOL_MS) for start, word in words]


@cache
def _symbol_waveforms(sample_rate: int) -> NDArray[np.float32]:
    """One row per alphabet symbol: its tone pair under the ramp envelope."""
    n = _samples(SYMBOL_MS, sample_rate)
    ramp = _samples(RAMP_MS, sample_rate)
    envelope = np.ones(n)
    rise = 0.5 * (1.0 - np.cos(np.pi * np.arange(ramp) / ramp))
    envelope[:ramp] = rise
    envelope[n - ramp :] = rise[::-1]
    t = np.arange(n) / sample_rate
    k = np.arange(len(ALPHABET))
    low = np.array(LOW_HZ)[k // 10, None]
    high = np.array(HIGH_HZ)[k % 10, None]
    tones = np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)
    return (TONE_AMPLITUDE * tones * envelope).astype(np.float32)


def synthesize_samples(
    script: Script, sample_rate: int, *, lead_ms: int = 200, tail_ms: int = 0
) -> NDArray[np.float32]:
    """Mono float32 audio of ``script`` at ``sample_rate``: ``lead_ms`` of silence first, ``tail_ms`` last."""
    if sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(f"sample rate must be >= {MIN_SAMPLE_RATE} Hz, got {sample_rate}")
    if lead_ms < 0 or tail_ms < 0:
        raise ValueError(f"lead_ms and tail_ms must be >= 0, got {lead_ms} and {tail_ms}")
    words, total_ms = _layout(script, lead_ms, tail_ms)
    waveforms = _symbol_waveforms(sample_rate)
    symbol = waveforms.shape[1]
    starts = [_samples(start_ms, sample_rate) for start_ms, _ in words]
    ends = [s + len(w) * symbol for s, (_, w) in zip(starts, words, strict=True)]
    out = np.zeros(max([_samples(total_ms, sample_rate), *ends]), dtype=np.float32)
    for start, (_, word) in zip(starts, words, strict=True):
        rows = waveforms[[_SYMBOL_INDEX[ch] for ch in word]]
        out[start : start + rows.size] = rows.ravel()
    return out


def synthesize(
    script: Script, sample_rate: int, encoding: Encoding, *, lead_ms: int = 200, tail_ms: int = 0
) -> bytes:
    """:func:`synthesize_samples` encoded as ``encoding`` bytes."""
    return encode(synthesize_samples(script, sample_rate, lead_ms=lead_ms, tail_ms=tail_ms), encoding)


@cache
def _analysis(sample_rate: int) -> tuple[NDArray[np.float64], NDArray[np.float64], float, float]:
    """Hann window, its cosine and sine rows at the grid frequencies, and the gains from sums to power."""
    n = _samples(ANALYSIS_END_MS, sample_rate) - _samples(ANALYSIS_START_MS, sample_rate)
    window = np.hanning(n)
    phase = 2 * np.pi * np.outer(_GRID_HZ, np.arange(n)) / sample_rate
    basis = np.concatenate((window * np.cos(phase), window * np.sin(phase)))
    tone_gain = float(window.sum() / 2) ** 2
    energy_gain = float((window**2).sum() / 2)
    return window, basis, tone_gain, energy_gain


def _classify(part: NDArray[np.float64], sample_rate: int) -> str | None:
    """The symbol whose tone pair dominates ``part`` (a window's central part), or None."""
    window, basis, tone_gain, energy_gain = _analysis(sample_rate)
    # An elementwise product, not a BLAS matmul: cheaper for these sizes and free of thread start-up.
    projection = (basis * part).sum(axis=1)
    power = (projection[: _GRID_HZ.size] ** 2 + projection[_GRID_HZ.size :] ** 2) / tone_gain
    total = float(((window * part) ** 2).sum()) / energy_gain
    low, high = np.sort(power[:10]), np.sort(power[10:])
    if (
        low[-1] < MIN_TONE_SHARE * total
        or high[-1] < MIN_TONE_SHARE * total
        or low[-1] + high[-1] < MIN_PAIR_SHARE * total
        or low[-2] > MAX_RIVAL_RATIO * low[-1]
        or high[-2] > MAX_RIVAL_RATIO * high[-1]
    ):
        return None
    k = int(np.argmax(power[:10])) * 10 + int(np.argmax(power[10:]))
    return ALPHABET[k] if k < len(ALPHABET) else None


class TonesRecognizer:
    """Streaming decoder of :func:`synthesize` audio for one connection (see the module docstring)."""

    def __init__(self, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be > 0, got {sample_rate}")
        self._rate = sample_rate
        self._symbol = _samples(SYMBOL_MS, sample_rate)
        self._part_start = _samples(ANALYSIS_START_MS, sample_rate)
        self._part_end = _samples(ANALYSIS_END_MS, sample_rate)
        self._frame = max(1, _samples(ONSET_FRAME_MS, sample_rate))
        self._guard = _samples(FLUSH_GUARD_MS, sample_rate)
        self._threshold = ENERGY_THRESHOLD**2
        # Samples [_base, _fed) are buffered; when _base > _fed, samples before _base are skipped on arrival.
        self._buf = np.zeros(0, dtype=np.float32)
        self._base = 0
        self._fed = 0
        self._in_word = False
        self._search_from = 0
        self._symbol_start = 0
        self._word_has_text = False
        self._any_text = False

    def feed(self, samples: NDArray[np.float32]) -> list[EngineEvent]:
        """Consume the next samples; return what became known, in audio-time order."""
        x = np.asarray(samples, dtype=np.float32).ravel()
        start = self._fed
        self._fed += x.size
        if self._base > start:
            x = x[self._base - start :]
        self._buf = np.concatenate((self._buf, x))
        return self._run()

    def flush(self) -> list[EngineEvent]:
        """End the current word if the audio after its last symbol is silent; never decode partial symbols."""
        if not self._in_word:
            return []
        boundary = self._symbol_start
        tail = self._slice(boundary + self._guard, self._fed)
        if tail.size < self._frame or self._mean_square(tail) >= self._threshold:
            return []
        self._end_word()
        return [SpeechEnd(self._ms(boundary)), *self._run()]

    def _run(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        while self._step_symbol(events) if self._in_word else self._find_onset(events):
            pass
        keep_from = self._symbol_start + self._guard if self._in_word else self._search_from
        drop = min(max(keep_from - self._base, 0), self._buf.size)
        self._buf = self._buf[drop:].copy()  # a view would pin the whole fed chunk in memory
        self._base = max(self._base, keep_from)
        return events

    def _find_onset(self, events: list[EngineEvent]) -> bool:
        n_frames = max(self._fed - self._search_from, 0) // self._frame
        if n_frames == 0:
            return False
        frames = self._slice(self._search_from, self._search_from + n_frames * self._frame)
        energy = np.square(frames.reshape(n_frames, self._frame), dtype=np.float64).mean(axis=1)
        loud = np.flatnonzero(energy >= self._threshold)
        if loud.size == 0:
            self._search_from += n_frames * self._frame
            return False
        onset = self._search_from + int(loud[0]) * self._frame
        self._in_word = True
        self._symbol_start = onset
        self._word_has_text = False
        events.append(SpeechStart(self._ms(onset)))
        return True

    def _step_symbol(self, events: list[EngineEvent]) -> bool:
        start = self._symbol_start
        if self._fed < start + self._part_end:
            return False
        part = self._slice(start + self._part_start, start + self._part_end).astype(np.float64)
        if self._mean_square(part) < self._threshold:
            self._end_word()
            events.append(SpeechEnd(self._ms(start)))
            return True
        char = _classify(part, self._rate)
        if char is not None:
            separator = " " if self._any_text and not self._word_has_text else ""
            events.append(Text(separator + char, self._ms(start + self._part_end)))
            self._word_has_text = self._any_text = True
        self._symbol_start = start + self._symbol
        return True

    def _end_word(self) -> None:
        self._in_word = False
        self._search_from = self._symbol_start + self._part_start

    def _slice(self, begin: int, end: int) -> NDArray[np.float32]:
        return self._buf[begin - self._base : end - self._base]

    @staticmethod
    def _mean_square(x: NDArray[np.floating[Any]]) -> float:
        return float(np.square(x, dtype=np.float64).mean())

    def _ms(self, sample: int) -> float:
        return sample * 1000.0 / self._rate


class TonesEngine:
    """Factory of :class:`TonesRecognizer` (engine name ``tones``)."""

    name = "tones"

    def recognizer(self, sample_rate: int) -> TonesRecognizer:
        """A fresh recognizer for a connection at ``sample_rate`` Hz."""
        return TonesRecognizer(sample_rate)
