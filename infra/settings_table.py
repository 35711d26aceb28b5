"""Print the README's settings table from the one source of every setting, ``pipeline.settings.Settings``.

``python infra/settings_table.py`` prints it; ``--check README.md`` exits 1 if the README's copy (between
the ``settings:begin`` / ``settings:end`` markers) differs. A unit test runs the check.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import settings as s

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def table() -> str:
    rows = ["| variable | default | |", "|---|---|---|"]
    for name, field in s.Settings.model_fields.items():
        default = s.shown_default(name) or "(empty)"
        note = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{s.env_name(name)}` | {default} | {note} |")
    return "\n".join(rows)


def embedded(readme: str) -> str:
    return readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(0 if embedded(Path(sys.argv[2]).read_text()) == table() else 1)
    print(table())
