"""`stt-pipeline analytics`: run the analytics app in the foreground; `analytics query "SQL"` and
`analytics export DIR` read the DuckDB store, also while the app is running (it holds DuckDB's one
writer, so then they ask the app)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from pipeline import settings as shared_settings
from pipeline.settings import Settings, SettingsError

PROG = "stt-pipeline analytics"


class QueryError(Exception):
    """The store refused a query (the message is the database's)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    shared_settings.add_arguments(parser)
    actions = parser.add_subparsers(dest="action")
    query = actions.add_parser("query", help="run SQL on the DuckDB store and print the rows")
    query.add_argument("sql", help='e.g. "SELECT status, count(*) FROM sessions GROUP BY status"')
    query.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    summary = actions.add_parser("summary", help="a one-screen summary from the running app's views")
    summary.add_argument("--minutes", type=int, default=60, help="how far back the counters go (default 60)")
    export = actions.add_parser("export", help="write the sessions and turns tables as Parquet files")
    export.add_argument("directory", type=Path, help="where sessions.parquet and turns.parquet go")


def run(args: argparse.Namespace) -> int:
    shared_settings.warn_ignored_flags(args)
    try:
        settings = Settings.load(args)
    except SettingsError as exc:
        print(f"{PROG}: invalid setting {exc}", file=sys.stderr)
        return 2
    if args.action is None:
        return run_app(settings)
    if args.action == "summary":
        return print_summary(settings, args.minutes, sys.stdout)
    if args.action == "export":
        directory = args.directory.resolve()
        directory.mkdir(parents=True, exist_ok=True)
        from pipeline.analytics.store import export_sql

        sql, as_csv = export_sql(directory), False
    else:
        sql, as_csv = args.sql, args.csv
    try:
        columns, rows = query(settings, sql)
    except QueryError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    (write_csv if as_csv else write_table)(columns, rows, sys.stdout)
    return 0


def query(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]]:
    """``sql`` on the store file, read-only; while the app holds the file, through the app."""
    import duckdb

    from pipeline.analytics.store import query_file

    path = Path(settings.analytics_db)
    if not path.exists():
        raise QueryError(f"no analytics database at {str(path)!r} (STT_ANALYTICS_DB); has the app run?")
    try:
        result = query_file(path, sql)
        return result.columns, result.rows
    except duckdb.IOException as exc:
        held_by_app = exc
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    return _ask_app(settings, sql, held_by_app)


def _ask_app(settings: Settings, sql: str, why: Exception) -> tuple[list[str], list[list[Any]]]:
    url = f"http://{settings.analytics_host}:{settings.analytics_port}/query"
    request = urllib.request.Request(
        url, data=json.dumps({"sql": sql}).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except ValueError:
            message = str(exc)
        raise QueryError(message) from None
    except (urllib.error.URLError, OSError) as exc:
        raise QueryError(f"{why} (and the analytics app at {url} did not answer: {exc})") from None
    return list(body["columns"]), [list(row) for row in body["rows"]]


def _get(settings: Settings, path: str) -> Any:
    url = f"http://{settings.analytics_host}:{settings.analytics_port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def print_summary(settings: Settings, minutes: int, out: TextIO) -> int:
    """Sessions, turns, words, `end` → final latency and problems of the last ``minutes``, and the
    latest finals, as the running app's views show them."""
    try:
        stats = _get(settings, f"/stats?minutes={minutes}")
        recent = _get(settings, "/recent?limit=5")["sessions"]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"{PROG}: the analytics app does not answer: {exc}", file=sys.stderr)
        return 1
    counts, latency = stats["total"]["counts"], stats["total"]["latency_ms"]
    ended = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("sessions_ended.")}
    problems = {k: v for k, v in counts.items() if k.startswith(("errors.", "dead_letters."))}
    out.write(f"last {minutes} min: {counts.get('sessions_started', 0)} sessions started, ")
    ended_text = ", ".join(f"{n} {status}" for status, n in ended.items()) or "none"
    out.write(f"{stats['open_sessions']} open now, ended: {ended_text}\n")
    out.write(f"turns {counts.get('turns', 0)}, words {counts.get('words', 0)}, ")
    out.write(f"audio {counts.get('audio_s', 0):.1f} s\n")
    if latency["n"]:
        out.write(f"end -> session final: p50 {latency['p50']} ms, p95 {latency['p95']} ms (n={latency['n']})\n")
    out.write(f"errors and dead letters: {', '.join(f'{k} {v}' for k, v in problems.items()) or 'none'}\n")
    if recent:
        out.write("latest finals:\n")
        write_table(
            ["session", "status", "turns", "words", "latency_ms", "transcript"],
            [
                [r["session_id"], r["status"], r["turns"], r["words"], r["latency_ms"], _cut(r["transcript"], 60)]
                for r in recent
            ],
            out,
        )
    return 0


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def write_table(columns: list[str], rows: list[list[Any]], out: TextIO) -> None:
    """An aligned text table, numbers right-aligned; text cells on one line."""
    cells = [[_shown(v).replace("\n", " ") for v in row] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return " | ".join(parts).rstrip()

    out.write(line(columns) + "\n")
    out.write("-+-".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write(line(row) + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def write_csv(columns: list[str], rows: list[list[Any]], out: TextIO) -> None:
    """CSV with every value in full (floats as ``repr``, no rounding)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([repr(v) if isinstance(v, float) else _shown(v) for v in row])


def run_app(settings: Settings) -> int:
    """The Faust app in the foreground until SIGTERM/SIGINT (topics created first, like the worker)."""
    import asyncio

    import faust

    from pipeline.analytics.app import Analytics
    from pipeline.analytics.store import Store
    from pipeline.kafka.topics import TopicSetupError, ensure_topics

    if settings.create_topics:
        try:
            asyncio.run(ensure_topics(settings))
        except TopicSetupError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
    asyncio.set_event_loop(asyncio.new_event_loop())
    store = Store(Path(settings.analytics_db))
    analytics = Analytics(settings, store)
    worker = faust.Worker(analytics.app, loglevel=settings.log_level, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    finally:
        store.close()
    return 0
