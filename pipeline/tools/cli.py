"""Command-line glue for `stt-pipeline produce` and `stt-pipeline tail` (arguments and runners).

Kafka and topic settings resolve as flag, else the worker's environment variable, else its default: both
come from :class:`pipeline.settings.Settings` (``bootstrap_servers``, ``audio_topic``, ``turns_topic``,
``transcripts_topic``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from pipeline import settings as worker_settings
from pipeline.audio import ENCODINGS
from pipeline.settings import Settings, SettingsError
from pipeline.tools.produce import (
    DEFAULT_CHUNK_MS,
    DEFAULT_PAUSE_MS,
    Endpoint,
    ProduceError,
    TopicNotFound,
    produce_file,
)
from pipeline.tools.tail import (
    TerminalOutput,
    TurnRenderer,
    tail,
    terminal_width,
)

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _settings(command: str, bootstrap: str | None) -> Settings | None:
    """The worker's settings from the environment, ``--bootstrap`` applied (None, after saying why, if
    they are invalid). The Kafka security variables are the worker's: see :mod:`pipeline.settings`."""
    try:
        settings = Settings.load()
        return settings if bootstrap is None else settings.replace(bootstrap_servers=bootstrap)
    except SettingsError as exc:
        _error(command, f"invalid setting {exc}")
        return None


def _add_bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", default=None, help=worker_settings.help_text("bootstrap_servers"))


def add_produce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.wav", help="PCM WAV (mono or multichannel, 8/16/24/32-bit)")
    parser.add_argument("--session", required=True, help="session id (the record key)")
    parser.add_argument("--fast", action="store_true", help="send as fast as possible instead of in realtime")
    parser.add_argument(
        "--endpoint",
        choices=("auto", "manual"),
        default=None,
        help="STT endpoint: auto (server turn detection) or manual [default auto; manual with --finalize-every-turn]",
    )
    parser.add_argument("--encoding", choices=ENCODINGS, default=None, help="re-encode to this (downmixes to mono)")
    parser.add_argument("--sample-rate", type=int, default=None, help="resample to this rate in Hz (downmixes to mono)")
    parser.add_argument("--chunk-ms", type=float, default=DEFAULT_CHUNK_MS, help="audio per record [default 100]")
    parser.add_argument(
        "--finalize-every-turn",
        action="store_true",
        help="send a `finalize` record after each pause in speech (manual endpoint: one turn per utterance)",
    )
    parser.add_argument(
        "--pause-ms",
        type=float,
        default=DEFAULT_PAUSE_MS,
        help=f"silence that ends an utterance for --finalize-every-turn [default {DEFAULT_PAUSE_MS:g}]",
    )
    parser.add_argument("--model", default=None, help="`model` header (e.g. ink-2)")
    parser.add_argument("--language", default=None, help="`language` header, ISO 639-1 (manual endpoint)")
    parser.add_argument("--no-end", action="store_true", help="do not send the `end` record (leave the session open)")
    parser.add_argument("--topic", default=None, help=worker_settings.help_text("audio_topic"))
    _add_bootstrap(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_tail_arguments(parser: argparse.ArgumentParser) -> None:
    topic = parser.add_mutually_exclusive_group()
    topic.add_argument(
        "--topic", default=None, help="topic to follow, default: " + worker_settings.help_text("turns_topic")
    )
    topic.add_argument(
        "--transcripts",
        action="store_true",
        help="follow the " + worker_settings.help_text("transcripts_topic"),
    )
    parser.add_argument("--session", action="append", default=None, help="only this session id (repeatable)")
    parser.add_argument("--session-prefix", default=None, help="only session ids starting with this")
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest records, not the end")
    parser.add_argument("--until-sessions", type=int, default=None, metavar="N", help="exit after N sessions ended")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this long (exit 1 if --until-sessions was not reached)",
    )
    parser.add_argument("--sessions-only", action="store_true", help="transcripts topic: only whole-session lines")
    parser.add_argument("--plain", action="store_true", help="finals only, no in-place lines (default when piped)")
    _add_bootstrap(parser)


def _run(main: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
    """Run ``main``; the first SIGINT/SIGTERM sets ``stop`` (graceful), a second SIGINT interrupts."""

    async def runner() -> T:
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            stop.set()
            # Back to the default handlers: a second Ctrl-C raises KeyboardInterrupt.
            loop.remove_signal_handler(sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        return await main

    return asyncio.run(runner())


def _quiet_aiokafka() -> None:
    """Keep aiokafka's chatter off a terminal tool's output, unless debugging.

    A missing topic is reported once by the tools themselves; aiokafka logs an error per metadata retry.
    """
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
        logging.getLogger("aiokafka.cluster").addFilter(
            lambda record: "not found in cluster metadata" not in record.getMessage()
        )


def _error(command: str, message: str) -> None:
    print(f"stt-pipeline {command}: error: {message}", file=sys.stderr)


def run_produce(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    _quiet_aiokafka()
    endpoint: Endpoint = args.endpoint or ("manual" if args.finalize_every_turn else "auto")
    if args.finalize_every_turn and endpoint != "manual":
        _error("produce", "--finalize-every-turn needs the manual endpoint (turns on auto are the service's)")
        return EXIT_USAGE
    if args.chunk_ms <= 0 or args.pause_ms <= 0:
        _error("produce", "--chunk-ms and --pause-ms must be > 0")
        return EXIT_USAGE
    settings = _settings("produce", args.bootstrap)
    if settings is None:
        return EXIT_USAGE
    topic = args.topic or settings.audio_topic
    stop = asyncio.Event()
    try:
        _run(
            produce_file(
                args.file,
                bootstrap=settings,
                topic=topic,
                session_id=args.session,
                encoding=args.encoding,
                sample_rate=args.sample_rate,
                endpoint=endpoint,
                chunk_ms=args.chunk_ms,
                realtime=not args.fast,
                finalize_every_turn=args.finalize_every_turn,
                pause_ms=args.pause_ms,
                model=args.model,
                language=args.language,
                end=not args.no_end,
                show_progress=not args.quiet and sys.stderr.isatty(),
                stop=stop,
            ),
            stop,
        )
    except (ProduceError, OSError) as exc:
        _error("produce", str(exc))
        return EXIT_USAGE
    except TopicNotFound as exc:
        _error("produce", str(exc))
        return EXIT_FAILED
    except KafkaError as exc:
        _error("produce", f"Kafka: {exc!r}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if stop.is_set():
        print(f"{args.session}: interrupted; the rest of the file was not sent", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def run_tail(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    _quiet_aiokafka()
    settings = _settings("tail", args.bootstrap)
    if settings is None:
        return EXIT_USAGE
    topic = settings.transcripts_topic if args.transcripts else args.topic or settings.turns_topic
    width = None if args.plain else terminal_width(sys.stdout)
    live = width is not None
    renderer = TurnRenderer(
        live=live,
        sessions=args.session,
        session_prefix=args.session_prefix,
        sessions_only=args.sessions_only,
        width=width,
    )
    output = TerminalOutput(sys.stdout, live=live)
    stop = asyncio.Event()
    try:
        reached = _run(
            tail(
                settings,
                topic,
                renderer=renderer,
                output=output,
                from_beginning=args.from_beginning,
                until_sessions=args.until_sessions,
                timeout_s=args.timeout,
                stop=stop,
            ),
            stop,
        )
    except KafkaError as exc:
        _error("tail", f"Kafka: {exc!r}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if not reached and not stop.is_set():
        ended = f"{renderer.sessions_ended}/{args.until_sessions}"
        _error("tail", f"timed out after {args.timeout:g} s with {ended} sessions ended")
        return EXIT_FAILED
    return 0
