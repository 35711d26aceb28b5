"""Write ``constraints.txt``: exact pins of every distribution that
``stt-pipeline[asr,analytics,bench,dev,fast]`` needs, as installed in the running environment (the
lock that ``make setup`` installs with ``-c``).

Run it after changing a range in ``pyproject.toml`` and installing: ``.venv/bin/python infra/lock.py``.
It walks the installed metadata from the project's requirements (markers evaluated for this interpreter),
so packages installed by hand that nothing requires are not pinned.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "stt-pipeline"
EXTRAS = ("asr", "analytics", "bench", "dev", "fast")
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "constraints.txt"


def project_requirements(extras: tuple[str, ...]) -> list[str]:
    """The requirements of ``pyproject.toml`` (not of the installed metadata, which may be older)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(req for extra in extras for req in optional[extra])]


def closure(roots: list[str]) -> dict[str, str]:
    """Canonical name -> installed version of everything ``roots`` require, transitively."""
    pins: dict[str, str] = {}
    todo: list[tuple[list[str], frozenset[str]]] = [(roots, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requires, wanted = todo.pop()
        for text in requires:
            req = Requirement(text)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            key = canonicalize_name(req.name)
            pins[key] = metadata.version(req.name)
            if (key, frozenset(req.extras)) not in seen:
                seen.add((key, frozenset(req.extras)))
                todo.append((metadata.distribution(req.name).requires or [], frozenset(req.extras)))
    return pins


def main() -> int:
    pins = closure(project_requirements(EXTRAS))
    lines = [
        f"# Exact pins of everything {PROJECT}[{','.join(EXTRAS)}] installs (Python "
        f"{sys.version_info.major}.{sys.version_info.minor}, Linux x86_64).",
        "# Used by `make setup` as `pip install -c constraints.txt`; regenerate with `python infra/lock.py`.",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{OUT.name}: {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
