"""Measure the CPU cost of the emulator's `whisper` engine: CPU-seconds spent per second of audio.

Synthesizes speech with espeak-ng (sentences separated by pauses, as in a conversation), feeds it to
one recognizer in real-time-sized chunks as fast as possible, and prints the cost. Model loading is
timed separately and not included. Run: ``python bench/whisper_cpu.py --seconds 120``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import soxr
from numpy.typing import NDArray

from pipeline.emulator.engines.base import EngineEvent, Text
from pipeline.emulator.engines.whisper import WhisperEngine

SENTENCES = (
    "Open the door and turn on the light.",
    "We will meet again on Monday.",
    "My name is John and I live in London.",
    "Please call me back tomorrow morning.",
    "The quick brown fox jumps over the lazy dog.",
    "I would like to order a large pizza, with extra cheese and olives.",
)


def speak(text: str, path: Path) -> tuple[NDArray[np.float32], int]:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def conversation(seconds: float, pause_s: float) -> tuple[NDArray[np.float32], int, float]:
    """At least ``seconds`` of audio: the sentences in turn, each followed by ``pause_s`` of silence.

    Returns the audio, its sample rate and how many of its seconds are espeak output (not pauses).
    """
    with tempfile.TemporaryDirectory() as directory:
        spoken = [speak(text, Path(directory) / f"{i}.wav") for i, text in enumerate(SENTENCES)]
    rate = spoken[0][1]
    pause = np.zeros(int(pause_s * rate), dtype=np.float32)
    parts: list[NDArray[np.float32]] = []
    total = spoken_samples = 0
    while total < seconds * rate:
        samples = spoken[len(parts) // 2 % len(spoken)][0]
        parts += [samples, pause]
        total += samples.size + pause.size
        spoken_samples += samples.size
    return np.concatenate(parts), rate, spoken_samples / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="audio length (default 120)")
    parser.add_argument("--pause", type=float, default=1.0, help="silence between sentences, s (default 1)")
    parser.add_argument("--rate", type=int, default=16_000, help="connection sample rate (default 16000)")
    parser.add_argument("--chunk-ms", type=int, default=100, help="feed size (default 100)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="CTranslate2 threads (default 1)")
    parser.add_argument("--beam-size", type=int, default=1, help="decoder beam (default 1)")
    args = parser.parse_args()

    audio, native_rate, spoken_s = conversation(args.seconds, args.pause)
    if args.rate != native_rate:
        audio = np.asarray(soxr.resample(audio, native_rate, args.rate), dtype=np.float32)
    audio_s = audio.size / args.rate

    engine = WhisperEngine(cpu_threads=args.cpu_threads, beam_size=args.beam_size)
    started = time.perf_counter()
    engine.load()
    print(f"model load: {time.perf_counter() - started:.2f} s wall")

    recognizer = engine.recognizer(args.rate)
    chunk = args.rate * args.chunk_ms // 1000
    events: list[EngineEvent] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, audio.size, chunk):
        events += recognizer.feed(audio[start : start + chunk])
    events += recognizer.flush()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    texts = [event for event in events if isinstance(event, Text)]
    print(f"audio: {audio_s:.1f} s at {args.rate} Hz ({spoken_s:.1f} s spoken), {len(texts)} texts")
    print(f"cpu: {cpu:.2f} s -> {cpu / audio_s:.3f} CPU-s per audio-s")
    print(f"wall: {wall:.2f} s -> {wall / audio_s:.3f} wall-s per audio-s (real-time factor)")
    print(f"sample text: {texts[0].text!r}" if texts else "no text")


if __name__ == "__main__":
    main()
