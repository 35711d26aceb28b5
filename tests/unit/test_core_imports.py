"""The sans-I/O core (partition, router, commit) imports no asyncio, aiokafka or websockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ("pipeline.partition", "pipeline.router", "pipeline.commit")
IO_PACKAGES = ("asyncio", "aiokafka", "websockets")


def _io_modules_after_importing(modules: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {set(IO_PACKAGES)!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_core_modules_import_no_io_libraries() -> None:
    assert _io_modules_after_importing(CORE) == []


def test_each_core_module_alone_imports_no_io_libraries() -> None:
    for module in CORE:
        assert _io_modules_after_importing((module,)) == [], module


def test_the_check_sees_an_io_import() -> None:
    """The probe itself works: importing asyncio is reported."""
    assert "asyncio" in _io_modules_after_importing(("asyncio",))
