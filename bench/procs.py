"""The bench's processes: the Kafka broker, the STT emulator (pinned settings), peers and load generators.

Every process is started here and stopped here, by the PID it was started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from tests.support.kafka import KafkaBroker

REPO_ROOT = Path(__file__).resolve().parents[1]
# The emulator's settings, pinned so that figures compare across runs (its defaults may change).
EMULATOR_FLAGS = (
    "--engine", "tones",
    "--server-buffer-ms", "1000",
    "--overload-budget-ms", "2000",
    "--idle-timeout", "20",
)  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return cast(dict[str, Any], json.loads(response.read()))


def broker_pid(broker: KafkaBroker) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((Path(broker.data_dir) / "kafka.pid").read_text().strip())
    return None


@contextlib.contextmanager
def emulator(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The STT emulator (``tones`` engine, :data:`EMULATOR_FLAGS`) as a separate process: (base URL, process)."""
    port = free_port()
    log_path = workdir / "emulator.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "stt-pipeline"), "emulator", "--port", str(port), *EMULATOR_FLAGS],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if http_json(f"{base}/_emulator/health", 1.0).get("status") == "ok":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("emulator did not become healthy within 60 s")
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class Child:
    """A ``python -m <module> SPEC`` child speaking the line protocol of :mod:`bench.peer`."""

    def __init__(self, module: str, spec: dict[str, Any], workdir: Path, name: str) -> None:
        self.module, self.spec_path, self.log_path = module, workdir / f"{name}.json", workdir / f"{name}.log"
        self.spec_path.write_text(json.dumps(spec))
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                str(self.spec_path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=str(REPO_ROOT),
                limit=1 << 24,
            )

    async def line(self, limit_s: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), limit_s)
        if not raw:
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"{self.module} exited ({await self.proc.wait()}): {tail}")
        return raw.decode().strip()

    async def expect(self, word: str, limit_s: float) -> None:
        got = await self.line(limit_s)
        if got != word:
            raise RuntimeError(f"{self.module}: expected {word!r}, got {got[:200]!r}")

    async def stop_and_report(self, limit_s: float = 90) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.proc.stdin.write(b"stop\n")
            await self.proc.stdin.drain()
        return cast(dict[str, Any], json.loads(await self.line(limit_s)))

    async def report(self, limit_s: float) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(await self.line(limit_s)))

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
