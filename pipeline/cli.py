"""`stt-pipeline`: the command-line entry point (emulator, worker, produce, tail)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pipeline import config as worker_config
from pipeline.emulator import cli as emulator_cli
from pipeline.tools import cli as tools_cli


async def _run_worker(args: argparse.Namespace) -> int:
    from pipeline.kafka.topics import TopicSetupError
    from pipeline.worker import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    config = worker_config.from_env(args)
    if config.metrics_port:
        from pipeline import metrics

        metrics.serve(config.metrics_port)
    try:
        await Worker(config).run(stop)
    except TopicSetupError as exc:
        print(f"stt-pipeline worker: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stt-pipeline", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    emulator_cli.add_arguments(
        commands.add_parser("emulator", help="run the local Cartesia-compatible STT emulator")
    )
    worker_config.add_arguments(
        commands.add_parser("worker", help="consume stt.audio, transcribe sessions, publish turns and transcripts")
    )
    tools_cli.add_produce_arguments(
        commands.add_parser("produce", help="stream a WAV file to stt.audio as one session, then `end`")
    )
    tools_cli.add_tail_arguments(
        commands.add_parser("tail", help="follow stt.turns (or stt.transcripts) readably in a terminal")
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "emulator":
        return emulator_cli.run(args)
    if args.command == "worker":
        return asyncio.run(_run_worker(args))
    if args.command == "produce":
        return tools_cli.run_produce(args)
    if args.command == "tail":
        return tools_cli.run_tail(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
