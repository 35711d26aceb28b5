"""The built wheel works outside the checkout: installed alone into a fresh virtualenv, run from elsewhere.

The wheel is built with ``pip wheel --no-deps``; its dependencies come offline from a wheelhouse in
``.cache/wheelhouse`` at the locked versions of ``constraints.txt`` (filled from the package index on the
first run only). Nothing of the checkout is importable by the installed program: the commands run in a
temporary directory with ``PYTHONPATH`` removed. The wheel is built from a copy of the files a build
reads, so the build leaves nothing in the checkout.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.kafka import free_ports

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / ".cache" / "wheelhouse"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]

pytestmark = pytest.mark.timeout(600)


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def runtime_requirements(wheel: Path) -> list[str]:
    """The wheel's own ``Requires-Dist`` entries that apply without extras."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.BytesParser().parsebytes(archive.read(name))
    requirements = [Requirement(text) for text in meta.get_all("Requires-Dist") or []]
    return [str(r) for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def outside_env(venv: Path) -> dict[str, str]:
    """The environment of the installed program: this one without PYTHONPATH, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv outside the repository with only our wheel and its locked dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    assert not tmp.resolve().is_relative_to(ROOT)
    source = tmp / "source"
    shutil.copytree(ROOT / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    venv = tmp / "venv"
    env = outside_env(venv)
    dist = tmp / "dist"
    run(sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--quiet", "-w", dist, cwd=tmp, env=env)
    (wheel,) = dist.glob("stt_pipeline-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp, env=env)
    pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet"]
    offline = [*pip, "--no-index", "--find-links", WHEELHOUSE, "-c", ROOT / "constraints.txt", wheel]
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    first = subprocess.run([str(a) for a in offline], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    if first.returncode != 0:  # a cold (or outdated) wheelhouse: fill it at the locked versions, once
        fill = [sys.executable, "-m", "pip", "wheel", "--quiet", "-w", WHEELHOUSE, "-c", ROOT / "constraints.txt"]
        run(*fill, *runtime_requirements(wheel), cwd=tmp, env=env, timeout=600)
        run(*offline, cwd=tmp, env=env)
    return venv


def test_version_is_the_installed_distribution(installed: Path, tmp_path: Path) -> None:
    out = run(installed / "bin" / "stt-pipeline", "--version", cwd=tmp_path, env=outside_env(installed))
    assert out.strip() == f"stt-pipeline {VERSION}"


def test_records_validate_against_the_packaged_schemas(installed: Path, tmp_path: Path) -> None:
    script = """
import jsonschema, pipeline, sys
from pipeline.schemas import SCHEMA_DIR, validate
from pipeline.stt.client import USER_AGENT
record = {"kind": "session", "session_id": "s-1", "seq": 3, "turn": 2, "transcript": "Hello there.",
          "status": "complete", "audio_ms": 1200.0, "at": 1767225600000}
validate("transcript", record)
try:
    validate("transcript", {**record, "status": "maybe"})
except jsonschema.ValidationError:
    pass
else:
    sys.exit("an invalid record validated")
print(pipeline.__file__)
print(SCHEMA_DIR)
print(USER_AGENT)
"""
    out = run(installed / "bin" / "python", "-c", script, cwd=tmp_path, env=outside_env(installed))
    module, schema_dir, user_agent = out.splitlines()
    assert Path(module).is_relative_to(installed) and Path(schema_dir).is_relative_to(installed)
    assert user_agent == f"stt-pipeline/{VERSION}"


def test_the_worker_without_a_broker_fails_clearly(installed: Path, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    bootstrap = f"127.0.0.1:{port}"
    env = {
        **outside_env(installed),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STT_HTTP_HOST": "127.0.0.1",  # tests bind loopback only
        "STT_HTTP_PORT": str(free_ports(1)[0]),
    }
    done = subprocess.run(
        [str(installed / "bin" / "stt-pipeline"), "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"stt-pipeline worker: cannot reach Kafka at {bootstrap}" in done.stderr
    assert "Traceback" not in done.stderr
