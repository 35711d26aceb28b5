"""The DuckDB store and `stt-pipeline analytics query`/`export` on a file (no app running)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import duckdb
import pytest

from pipeline.analytics.cli import write_csv, write_table
from pipeline.analytics.store import Store, query_file
from pipeline.cli import main
from pipeline.contract import TranscriptRecord, TurnRecord


def fill(path: Path) -> None:
    clock = iter(range(1000, 2000))
    store = Store(path, clock_ms=lambda: next(clock))
    for n, text in enumerate(["Hi,", " there"]):
        record = TurnRecord("s1", 3 + n, "turn.end", "auto", None, 1000.0 * (n + 1), 500 + n, turn=n, transcript=text)
        store.add_turn(record, 510 + n)
        store.add_turn(record, 510 + n)  # a replay
    final = TranscriptRecord("session", "s1", 2, 2, "Hi, there", "complete", 2500.0, 900, end_at=800)
    store.add_session(final, 905, endpoint="auto", started_at=100)
    store.add_session(final, 905, endpoint="auto", started_at=100)
    assert store.session("s1") is not None and [t["turn"] for t in store.turns("s1")] == [0, 1]
    with pytest.raises(duckdb.Error):
        store.query("SELECT * FROM nowhere")
    assert store.query("DELETE FROM turns").rows == [[2]]
    store.close()


def test_replays_never_add_a_row_and_analyst_queries_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    fill(path)
    turns = query_file(path, "SELECT session_id, turn, transcript, words, ingested_at FROM turns ORDER BY turn")
    assert turns.rows == [["s1", 0, "Hi,", 1, 1000], ["s1", 1, " there", 1, 1002]]  # each row keeps its first ingestion
    session = query_file(path, "SELECT status, turns, words, latency_ms, audio_s FROM sessions")
    assert session.rows == [["complete", 2, 2, 100, 2.5]]


def test_query_cli_prints_a_table_or_csv_and_fails_with_the_database_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.duckdb"
    fill(path)
    monkeypatch.setenv("STT_ANALYTICS_DB", str(path))
    monkeypatch.setenv("STT_ANALYTICS_PORT", "1")  # no app there: the file is read directly
    assert main(["analytics", "query", "SELECT turn, transcript FROM turns ORDER BY turn"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["turn", "|", "transcript"] and out.endswith("(2 rows)\n")
    assert main(["analytics", "query", "--csv", "SELECT turn, transcript, audio_s FROM turns ORDER BY turn"]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out))) == [
        ["turn", "transcript", "audio_s"],
        ["0", "Hi,", "1.0"],
        ["1", " there", "2.0"],
    ]
    assert main(["analytics", "query", "SELECT * FROM nowhere"]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main(["analytics", "export", str(tmp_path / "lake")]) == 0
    capsys.readouterr()
    assert query_file(path, f"SELECT count(*) FROM '{tmp_path}/lake/turns.parquet'").rows == [[2]]


def test_query_without_a_database_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STT_ANALYTICS_DB", str(tmp_path / "none.duckdb"))
    assert main(["analytics", "query", "SELECT 1"]) == 1
    assert "no analytics database" in capsys.readouterr().err


def test_table_alignment() -> None:
    out = io.StringIO()
    write_table(["a", "name"], [[1, "x"], [10, None]], out)
    assert out.getvalue().splitlines() == [" a | name", "---+-----", " 1 | x", "10 |", "(2 rows)"]
    out = io.StringIO()
    write_csv(["v"], [[0.1 + 0.2]], out)
    assert out.getvalue() == "v\n0.30000000000000004\n"
