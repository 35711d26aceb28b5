"""`stt-pipeline`: the command-line entry point (emulator, worker, produce, tail)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from importlib import metadata

from pipeline import eventloop
from pipeline import settings as worker_settings
from pipeline.emulator import cli as emulator_cli
from pipeline.settings import Settings, SettingsError
from pipeline.tools import cli as tools_cli

PROG = "stt-pipeline"


def _version() -> str:
    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


async def _run_worker(config: Settings) -> int:
    from pipeline.errors import KafkaSetupError
    from pipeline.kafka.clients import denied
    from pipeline.worker import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config.metrics_port:
        from pipeline import metrics

        metrics.serve(config.metrics_port)
    try:
        await Worker(config).run(stop)
    except KafkaSetupError as exc:
        print(f"{PROG} worker: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = denied(exc, config)
        if message is None:
            raise
        print(f"{PROG} worker: {message}", file=sys.stderr)
        return 2
    return 0


def _worker(args: argparse.Namespace) -> int:
    worker_settings.warn_ignored_flags(args)
    try:
        config = Settings.load(args)
    except SettingsError as exc:
        print(f"{PROG} worker: invalid setting {exc}", file=sys.stderr)
        return 2
    return eventloop.run(_run_worker(config), use_uvloop=config.uvloop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", default=None, help=worker_settings.help_text("log_level"))
    commands = parser.add_subparsers(dest="command", required=True)
    emulator_cli.add_arguments(
        commands.add_parser("emulator", help="run the local Cartesia-compatible STT emulator")
    )
    # No abbreviations: `--api-key` must never be taken for `--api-key-file`.
    worker_settings.add_arguments(
        commands.add_parser(
            "worker",
            help="consume stt.audio, transcribe sessions, publish turns and transcripts",
            description="Every setting is an environment variable and (except secrets) a flag; "
            "a flag beats the variable, the variable beats the default.",
            allow_abbrev=False,
        )
    )
    tools_cli.add_produce_arguments(
        commands.add_parser("produce", help="stream a WAV file to stt.audio as one session, then `end`")
    )
    tools_cli.add_tail_arguments(
        commands.add_parser("tail", help="follow stt.turns (or stt.transcripts) readably in a terminal")
    )
    args = parser.parse_args(argv)
    try:
        level = worker_settings.log_level(args.log_level)
    except SettingsError as exc:
        print(f"{PROG}: invalid setting {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "emulator":
        return emulator_cli.run(args)
    if args.command == "worker":
        return _worker(args)
    if args.command == "produce":
        return tools_cli.run_produce(args)
    if args.command == "tail":
        return tools_cli.run_tail(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
