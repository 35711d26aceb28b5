"""`stt-pipeline emulator`: run the Cartesia-compatible STT emulator from the command line.

Where it listens defaults to where the worker would look: the host and port of ``STT_BASE_URL``
(:class:`pipeline.settings.Settings`) when that is a plain ``http://`` or ``ws://`` URL (a local
emulator), else ``127.0.0.1:8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from urllib.parse import urlsplit

from pipeline.emulator.engines.base import Engine
from pipeline.emulator.faults import Fault, RandomDrops
from pipeline.emulator.protocol import DEFAULT_SERVER_BUFFER_MS, VARIANTS
from pipeline.emulator.server import Emulator, EmulatorConfig
from pipeline.settings import Settings, SettingsError

LOCAL_HOST = "127.0.0.1"
LOCAL_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = f"[default: from STT_BASE_URL if it is http:// or ws://, else {LOCAL_HOST}:{LOCAL_PORT}]"
    parser.add_argument("--host", default=None, help=f"listen address {where}")
    parser.add_argument("--port", type=int, default=None, help=f"listen port {where}")
    parser.add_argument("--engine", choices=("tones", "whisper"), default="tones")
    parser.add_argument("--api-key", action="append", default=[], help="accepted key (repeatable; none = any)")
    parser.add_argument("--max-sessions", type=int, default=None, help="concurrent sockets before 429")
    parser.add_argument("--idle-timeout", type=float, default=20.0, help="seconds without a frame before close")
    parser.add_argument("--overload-budget-ms", type=float, default=2000.0, help="allowed lead over realtime")
    parser.add_argument(
        "--server-buffer-ms",
        type=float,
        default=DEFAULT_SERVER_BUFFER_MS,
        help="newest audio held back until more arrives, or close/finalize (0 = off)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        choices=VARIANTS,
        default=[],
        help="behave like a plausible alternative server where the docs are silent (repeatable)",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--fault-drop-at-ms", type=float, help="abort connections at this audio time")
    faults.add_argument("--fault-error-at-ms", type=float, help="send an error event at this audio time")
    faults.add_argument("--fault-error-status", type=int, default=503)
    faults.add_argument("--fault-event-delay-ms", type=float, help="hold every event back this long")
    faults.add_argument("--fault-connections", type=int, default=None, help="apply to N connections (default all)")
    faults.add_argument("--fault-random-drop-seed", type=int, help="drop connections at random audio times")
    faults.add_argument("--fault-random-drop-probability", type=float, default=1.0)
    faults.add_argument("--fault-random-drop-max-ms", type=float, default=10_000.0)


def make_engine(name: str) -> Engine:
    if name == "whisper":
        from pipeline.emulator.engines.whisper import WhisperEngine

        return WhisperEngine()
    from pipeline.emulator.engines.tones import TonesEngine

    return TonesEngine()


def listen_address(settings: Settings) -> tuple[str, int]:
    """Where the worker configured by ``settings`` looks for a local emulator."""
    parts = urlsplit(settings.stt_base_url)
    if parts.scheme in ("http", "ws") and parts.hostname:
        return parts.hostname, parts.port or 80
    return LOCAL_HOST, LOCAL_PORT


def build(args: argparse.Namespace, settings: Settings | None = None) -> Emulator:
    host, port = listen_address(settings if settings is not None else Settings.load())
    config = EmulatorConfig(
        host=args.host or host,
        port=port if args.port is None else args.port,
        api_keys=tuple(args.api_key),
        max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout,
        overload_budget_ms=args.overload_budget_ms,
        server_buffer_ms=args.server_buffer_ms,
        variants=frozenset(args.variant),
    )
    emulator = Emulator(make_engine(args.engine), config)
    n = args.fault_connections
    if args.fault_drop_at_ms is not None:
        emulator.faults.add(Fault("drop", at_audio_ms=args.fault_drop_at_ms, connections=n))
    if args.fault_error_at_ms is not None:
        emulator.faults.add(
            Fault("error", at_audio_ms=args.fault_error_at_ms, status_code=args.fault_error_status, connections=n)
        )
    if args.fault_event_delay_ms is not None:
        emulator.faults.add(Fault("delay", delay_ms=args.fault_event_delay_ms, connections=n))
    if args.fault_random_drop_seed is not None:
        emulator.faults.random_drops(
            RandomDrops(
                seed=args.fault_random_drop_seed,
                probability=args.fault_random_drop_probability,
                max_audio_ms=args.fault_random_drop_max_ms,
            )
        )
    return emulator


async def serve(args: argparse.Namespace, settings: Settings) -> None:
    emulator = build(args, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with emulator:
        print(f"stt emulator ({emulator.engine.name}) listening on {emulator.base_url}", flush=True)
        await stop.wait()
    stats = emulator.stats()
    logging.getLogger("pipeline.emulator").info(
        "served %d sessions, %d overloads", len(stats["sessions"]), stats["overloads"]
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.load()
    except SettingsError as exc:
        print(f"stt-pipeline emulator: invalid setting {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args, settings))
    return 0
