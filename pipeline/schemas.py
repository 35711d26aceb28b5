"""Validation of records against the wire contract, the JSON Schemas shipped inside the package.

The repository's top-level ``schemas/`` is the contract's source of truth; ``pipeline/contract_schemas/``
is its copy, shipped as package data so that an installed wheel validates without the checkout (a test
keeps the two identical). Validators are built once per kind, with format checking.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs in the venv

SchemaKind = Literal["turn", "transcript", "dead_letter", "checkpoint", "audio_headers"]

SCHEMA_DIR = Path(__file__).resolve().parent / "contract_schemas"
"""The directory holding the JSON Schema files (package data, a copy of the repository's ``schemas/``)."""

SCHEMA_FILES: Mapping[SchemaKind, str] = {
    "turn": "turn-event.schema.json",
    "transcript": "transcript.schema.json",
    "dead_letter": "dead-letter.schema.json",
    "checkpoint": "session-checkpoint.schema.json",
    "audio_headers": "audio-headers.schema.json",
}
"""Schema file name per kind: ``turn`` (stt.turns), ``transcript`` (stt.transcripts), ``dead_letter``
(stt.dead-letter), ``checkpoint`` (stt.sessions), ``audio_headers`` (stt.audio headers, decoded)."""


def load_schema(kind: SchemaKind) -> dict[str, Any]:
    """Return the parsed JSON Schema of ``kind`` (a fresh copy).

    :raises FileNotFoundError: if the schema file is not in :data:`SCHEMA_DIR`.
    """
    path = SCHEMA_DIR / SCHEMA_FILES[kind]
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@functools.cache
def validator(kind: SchemaKind) -> Draft202012Validator:
    """Return the cached validator of ``kind``; the schema itself is checked when first loaded.

    :raises jsonschema.SchemaError: if the schema file is not a valid draft 2020-12 schema.
    """
    schema = load_schema(kind)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(kind: SchemaKind, record: Mapping[str, Any]) -> None:
    """Validate ``record`` (a decoded JSON object, or decoded headers for ``audio_headers``).

    :raises jsonschema.ValidationError: the most relevant error, if ``record`` is invalid.
    """
    validator(kind).validate(record)
