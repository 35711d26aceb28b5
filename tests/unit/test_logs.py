"""Log lines: JSON objects with the session/partition/offset context, and no secret in any format."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from pipeline import logs

SECRET = "sk-log-secret-77f1"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def configure(stream: io.StringIO, fmt: str) -> None:
    logs.configure("DEBUG", fmt, [SECRET, ""])
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)


def test_json_lines_carry_the_context_where_it_applies(captured: io.StringIO) -> None:
    configure(captured, "json")
    log = logging.getLogger("pipeline.test")
    log.info("no context")
    with logs.log_context(partition=3, offset=41):
        log.warning("record %d", 41)

    async def session_task() -> None:
        logs.set_context(session_id="s-1", partition=3)
        log.info("in the session")

    asyncio.run(session_task())
    log.info("after", extra={"session_id": "s-2"})
    parsed = [json.loads(line) for line in captured.getvalue().splitlines()]
    lines = [line for line in parsed if line["logger"] == "pipeline.test"]
    assert [(line["level"], line["logger"], line["message"]) for line in lines] == [
        ("INFO", "pipeline.test", "no context"),
        ("WARNING", "pipeline.test", "record 41"),
        ("INFO", "pipeline.test", "in the session"),
        ("INFO", "pipeline.test", "after"),
    ]
    assert [{k: line[k] for k in logs.CONTEXT_FIELDS if k in line} for line in lines] == [
        {},
        {"partition": 3, "offset": 41},
        {"session_id": "s-1", "partition": 3},
        {"session_id": "s-2"},
    ]
    assert all(line["ts"].endswith("+00:00") for line in lines)


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.ERROR])
def test_no_secret_in_any_line_at_any_level(captured: io.StringIO, fmt: str, level: int) -> None:
    configure(captured, fmt)
    log = logging.getLogger("pipeline.test")
    log.log(level, "header Authorization: Bearer %s", SECRET)
    try:
        raise RuntimeError(f"refused key {SECRET}")
    except RuntimeError:
        log.log(level, "failed", exc_info=True)
    with logs.log_context(session_id=SECRET):
        log.log(level, "context")
    text = captured.getvalue()
    assert text.count("***") >= 3 and SECRET not in text
