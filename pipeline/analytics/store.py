"""The analysts' store: a DuckDB file with one `sessions` row per session final and one `turns` row per
`turn.end`, written by the analytics app only.

Rows are keyed (session id; session id and turn) and inserted with ``ON CONFLICT DO NOTHING``, so a
replayed record (an analytics restart re-reads what it had not committed) never adds a second row and
never changes the first one's ``ingested_at``. DuckDB allows one writing process per file: the app
holds it; a reader in another process opens the file read-only when the app is not running, and asks
the app (``POST /query``) when it is (:func:`pipeline.analytics.cli.query`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from pipeline.analytics.core import latency_ms, words
from pipeline.contract import TranscriptRecord, TurnRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id VARCHAR PRIMARY KEY,
    status VARCHAR NOT NULL,          -- complete | truncated | failed
    turns INTEGER NOT NULL,
    words INTEGER NOT NULL,
    audio_s DOUBLE NOT NULL,
    transcript VARCHAR NOT NULL,
    endpoint VARCHAR,
    started_at BIGINT,                -- session.start `at` (epoch ms), when analytics saw it
    end_at BIGINT,                    -- the input `end` record's timestamp (epoch ms)
    final_at BIGINT NOT NULL,         -- the session final's `at` (epoch ms)
    latency_ms BIGINT,                -- final_at - end_at
    kafka_ts BIGINT,                  -- the final's Kafka record timestamp
    ingested_at BIGINT NOT NULL       -- when this row was written (epoch ms)
);
CREATE TABLE IF NOT EXISTS turns (
    session_id VARCHAR NOT NULL,
    turn INTEGER NOT NULL,
    transcript VARCHAR NOT NULL,
    words INTEGER NOT NULL,
    audio_s DOUBLE NOT NULL,          -- audio sent when the turn ended
    endpoint VARCHAR NOT NULL,
    ended_at BIGINT NOT NULL,         -- the turn.end `at` (epoch ms)
    kafka_ts BIGINT,
    ingested_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, turn)
);
"""


@dataclass(frozen=True)
class Result:
    """A query's columns and rows, JSON-ready."""

    columns: list[str]
    rows: list[list[Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def run(connection: duckdb.DuckDBPyConnection, sql: str) -> Result:
    """Execute ``sql``; the last statement's rows (none for a statement without a result)."""
    cursor = connection.execute(sql)
    if cursor.description is None:
        return Result([], [])
    columns = [str(d[0]) for d in cursor.description]
    return Result(columns, [[_plain(v) for v in row] for row in cursor.fetchall()])


class Store:
    """The writer: the analytics app's one connection to the DuckDB file."""

    def __init__(self, path: Path, clock_ms: Callable[[], int] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._db = duckdb.connect(str(path))
        self._db.execute(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add_turn(self, record: TurnRecord, kafka_ts: int | None) -> None:
        """One `turn.end`; a second call for the same (session, turn) changes nothing."""
        assert record.type == "turn.end" and record.turn is not None
        text = record.transcript or ""
        self._db.execute(
            "INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                record.session_id,
                record.turn,
                text,
                words(text),
                record.audio_ms / 1000,
                record.endpoint,
                record.at,
                kafka_ts,
                self._clock_ms(),
            ],
        )

    def add_session(
        self,
        record: TranscriptRecord,
        kafka_ts: int | None,
        *,
        endpoint: str | None = None,
        started_at: int | None = None,
    ) -> None:
        """One `kind=session` final; a second call for the same session changes nothing."""
        assert record.kind == "session"
        self._db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                record.session_id,
                record.status,
                record.turn,
                words(record.transcript),
                record.audio_ms / 1000,
                record.transcript,
                endpoint,
                started_at,
                record.end_at,
                record.at,
                latency_ms(record),
                kafka_ts,
                self._clock_ms(),
            ],
        )

    def session(self, session_id: str) -> dict[str, Any] | None:
        result = run_params(self._db.cursor(), "SELECT * FROM sessions WHERE session_id = ?", [session_id])
        return dict(zip(result.columns, result.rows[0], strict=True)) if result.rows else None

    def turns(self, session_id: str) -> list[dict[str, Any]]:
        result = run_params(
            self._db.cursor(),
            "SELECT turn, transcript, words, audio_s, ended_at FROM turns WHERE session_id = ? ORDER BY turn",
            [session_id],
        )
        return [dict(zip(result.columns, row, strict=True)) for row in result.rows]

    def recent(self, limit: int) -> list[dict[str, Any]]:
        result = run_params(
            self._db.cursor(),
            "SELECT session_id, status, turns, words, audio_s, latency_ms, final_at, transcript "
            "FROM sessions ORDER BY final_at DESC, session_id LIMIT ?",
            [limit],
        )
        return [dict(zip(result.columns, row, strict=True)) for row in result.rows]

    def query(self, sql: str) -> Result:
        """An analyst's query on its own cursor, in a transaction that is rolled back: it cannot change
        the store. (Safe to call from another thread.)"""
        cursor = self._db.cursor()
        try:
            cursor.execute("BEGIN TRANSACTION")
            return run(cursor, sql)
        finally:
            with contextlib.suppress(duckdb.Error):  # the statement may have ended the transaction
                cursor.execute("ROLLBACK")
            cursor.close()


def run_params(connection: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> Result:
    cursor = connection.execute(sql, params)
    assert cursor.description is not None
    columns = [str(d[0]) for d in cursor.description]
    result = Result(columns, [[_plain(v) for v in row] for row in cursor.fetchall()])
    connection.close()
    return result


def query_file(path: Path, sql: str) -> Result:
    """``sql`` on the file opened read-only (raises ``duckdb.Error``, e.g. while the app holds it)."""
    connection = duckdb.connect(str(path), read_only=True)
    try:
        return run(connection, sql)
    finally:
        connection.close()


def export_sql(directory: Path) -> str:
    """The statements writing both tables as Parquet files into ``directory``."""
    quoted = str(directory).replace("'", "''")
    return (
        f"COPY sessions TO '{quoted}/sessions.parquet' (FORMAT parquet); "
        f"COPY turns TO '{quoted}/turns.parquet' (FORMAT parquet); "
        "SELECT (SELECT count(*) FROM sessions) AS sessions, (SELECT count(*) FROM turns) AS turns"
    )
