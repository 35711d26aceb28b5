"""The README's settings table is generated from ``Settings``: one source of truth, checked here."""

from __future__ import annotations

from pathlib import Path

from infra.settings_table import embedded, table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_every_setting_as_the_model_defines_it() -> None:
    assert embedded(README.read_text()) == table(), "regenerate with: .venv/bin/python infra/settings_table.py"
