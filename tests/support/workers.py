"""Real worker processes for fault tests: start, SIGTERM, kill -9, and peak memory from /proc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from pipeline.settings import Settings, env_name
from tests.support.kafka import free_ports

STT_PIPELINE = str(Path(sys.executable).with_name("stt-pipeline"))


def config_env(config: Settings) -> dict[str, str]:
    """The environment that makes a worker process use ``config``: every field's variable (the API key too,
    which has no flag), none of this process's own settings variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STT_", "KAFKA_", "CARTESIA_"))}
    for name in Settings.model_fields:
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            env[env_name(name)] = value.get_secret_value()
        else:
            env[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the process's peak resident set so far, in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class WorkerProcess:
    config: Settings
    log_path: Path
    instance_id: str
    proc: subprocess.Popen[bytes] | None = None
    peak_rss: int = 0
    exits: list[int] = field(default_factory=list)
    http_port: int = 0  # the worker's /metrics /healthz /readyz /status port, a free one per start

    def start(self) -> WorkerProcess:
        env = config_env(self.config)
        env["STT_GROUP_INSTANCE_ID"] = self.instance_id
        (self.http_port,) = free_ports(1)
        env["STT_HTTP_HOST"] = "127.0.0.1"
        env["STT_HTTP_PORT"] = str(self.http_port)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [STT_PIPELINE, "--log-level", "INFO", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.peak_rss = max(self.peak_rss, peak_rss_kib(self.proc.pid))

    def kill(self) -> None:
        """kill -9: no hand-off, no last commit."""
        if self.alive:
            assert self.proc is not None
            self.sample()
            self.proc.send_signal(signal.SIGKILL)
            self.exits.append(self.proc.wait(30))

    def terminate(self, timeout: float = 60.0) -> float:
        """SIGTERM and wait; returns how long the worker took to exit."""
        assert self.proc is not None
        self.sample()
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.exits.append(self.proc.wait(timeout))
        return time.monotonic() - started

    def status(self) -> dict[str, Any]:
        """The running worker's ``Worker.snapshot()``, read from its ``/status`` endpoint."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/status", timeout=10) as response:
            status: dict[str, Any] = json.loads(response.read())
        return status

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
