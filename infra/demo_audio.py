"""Helpers of `make demo` (infra/demo.sh): synthesize the demo sessions' speech, and wait for topics.

``synth DIR`` speaks each session's sentences with espeak-ng and joins them, with 1.2 s of silence
between sentences, into ``DIR/session-N.wav`` (16-bit mono at espeak's native rate).
``wait-topics --bootstrap HOST:PORT TOPIC...`` waits until the worker has created the topics.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

# Plain sentences that the emulator's tiny.en model recognizes reliably in espeak's voice, even at 8 kHz.
SESSIONS: tuple[tuple[str, ...], ...] = (
    (
        "My name is John and I live in London.",
        "Please call me back tomorrow morning.",
        "I would like to order a large pizza.",
    ),
    (
        "Good morning, I am calling about my order.",
        "It has not arrived yet.",
        "Can you help me with that?",
    ),
    (
        "Open the door and turn on the light.",
        "We will meet again on Monday.",
    ),
)
LEAD_S = 0.5
GAP_S = 1.2
TAIL_S = 1.5


def speak(text: str, path: Path) -> tuple[bytes, int]:
    """``text`` as 16-bit mono PCM from espeak-ng, and its sample rate."""
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth()) != (1, 2):
            raise RuntimeError(f"espeak-ng wrote {wav.getnchannels()} ch x {wav.getsampwidth()} bytes, not 16-bit mono")
        return wav.readframes(wav.getnframes()), wav.getframerate()


def silence(seconds: float, rate: int) -> bytes:
    return bytes(2 * int(seconds * rate))


def synth(out_dir: Path) -> list[Path]:
    """Write one WAV per session into ``out_dir``; returns their paths."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is missing: run `make setup` (or bash infra/install-espeak.sh)")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with tempfile.TemporaryDirectory() as scratch:
        for n, sentences in enumerate(SESSIONS, 1):
            spoken = [speak(text, Path(scratch) / f"{n}-{i}.wav") for i, text in enumerate(sentences)]
            rate = spoken[0][1]
            parts = [silence(LEAD_S, rate)]
            for i, (pcm, _) in enumerate(spoken):
                parts += [pcm, silence(GAP_S if i < len(spoken) - 1 else TAIL_S, rate)]
            path = out_dir / f"session-{n}.wav"
            with wave.open(str(path), "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(rate)
                wav.writeframes(b"".join(parts))
            paths.append(path)
    return paths


async def wait_topics(bootstrap: str, topics: list[str], timeout_s: float) -> bool:
    """Whether all ``topics`` exist within ``timeout_s``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            missing = set(topics) - set(await consumer.topics())
            if not missing:
                return True
            if loop.time() >= deadline:
                print(f"demo_audio: topics still missing: {', '.join(sorted(missing))}", file=sys.stderr)
                return False
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    synth_parser = commands.add_parser("synth", help="write the demo sessions' WAV files")
    synth_parser.add_argument("out_dir", type=Path)
    wait_parser = commands.add_parser("wait-topics", help="wait until topics exist")
    wait_parser.add_argument("--bootstrap", required=True)
    wait_parser.add_argument("--timeout", type=float, default=60.0)
    wait_parser.add_argument("topics", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "synth":
        for path in synth(args.out_dir):
            with wave.open(str(path), "rb") as wav:
                seconds = wav.getnframes() / wav.getframerate()
            print(f"{path} ({seconds:.1f} s at {wav.getframerate()} Hz)")
        return 0
    return 0 if asyncio.run(wait_topics(args.bootstrap, args.topics, args.timeout)) else 1


if __name__ == "__main__":
    sys.exit(main())
