"""`stt-pipeline`: the command-line entry point (emulator, worker, produce, tail, analytics)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from pipeline import DISTRIBUTION, __version__, eventloop, logs
from pipeline import settings as worker_settings
from pipeline.emulator import cli as emulator_cli
from pipeline.settings import Settings, SettingsError
from pipeline.tools import cli as tools_cli

PROG = DISTRIBUTION


async def _run_worker(config: Settings) -> int:
    from pipeline.endpoints import StatusServer
    from pipeline.errors import KafkaSetupError
    from pipeline.kafka.clients import denied
    from pipeline.worker import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(config)
    task = asyncio.ensure_future(worker.run(stop))  # not started before the first await below
    server = None
    if config.http_port:
        server = StatusServer(
            worker,
            loop,
            host=config.http_host,
            port=config.http_port,
            deadline_s=config.health_deadline_s,
            stt_window_s=config.ready_stt_window_s,
            alive=lambda: not task.done(),
        )
        try:
            server.start()
        except OSError as exc:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            print(
                f"{PROG} worker: cannot serve HTTP on {config.http_host}:{config.http_port} "
                f"(STT_HTTP_HOST, STT_HTTP_PORT): {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
    try:
        await task
    except KafkaSetupError as exc:
        print(f"{PROG} worker: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = denied(exc, config)
        if message is None:
            raise
        print(f"{PROG} worker: {message}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    return 0


def _worker(args: argparse.Namespace) -> int:
    worker_settings.warn_ignored_flags(args)
    try:
        config = Settings.load(args)
    except SettingsError as exc:
        print(f"{PROG} worker: invalid setting {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format, [config.stt_api_key(), config.kafka_password()])
    return eventloop.run(_run_worker(config), use_uvloop=config.uvloop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=None, help=worker_settings.help_text("log_level"))
    parser.add_argument("--log-format", default=None, help=worker_settings.help_text("log_format"))
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
    from pipeline.analytics import cli as analytics_cli

    analytics_cli.add_arguments(
        commands.add_parser(
            "analytics",
            help="the analytics app (Faust) over stt.turns/stt.transcripts/stt.dead-letter; query its DuckDB store",
            description="Without an action: run the app in the foreground. Settings as for the worker "
            "(STT_ANALYTICS_* and the Kafka ones).",
            allow_abbrev=False,
        )
    )
    args = parser.parse_args(argv)
    try:
        level = worker_settings.log_level(args.log_level)
        fmt = worker_settings.log_format(args.log_format)
    except SettingsError as exc:
        print(f"{PROG}: invalid setting {exc}", file=sys.stderr)
        return 2
    logs.configure(level, fmt)
    if args.command == "emulator":
        return emulator_cli.run(args)
    if args.command == "worker":
        return _worker(args)
    if args.command == "produce":
        return tools_cli.run_produce(args)
    if args.command == "tail":
        return tools_cli.run_tail(args)
    if args.command == "analytics":
        return analytics_cli.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
