"""A real `stt-pipeline analytics` process for tests: start, kill -9, read its web views, run its CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.settings import Settings
from tests.support.workers import STT_PIPELINE, config_env


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class AnalyticsProcess:
    config: Settings
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exits: list[int] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.config.analytics_host}:{self.config.analytics_port}"

    def start(self) -> AnalyticsProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [STT_PIPELINE, "--log-level", os.environ.get("STT_TEST_ANALYTICS_LOG", "INFO"), "analytics"],
            env=config_env(self.config),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """kill -9: no last commit, no clean close of the store."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.exits.append(self.proc.wait(30))

    def terminate(self, timeout: float = 60.0) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exits.append(self.proc.wait(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.exits.append(self.proc.wait(30))

    def get(self, path: str) -> tuple[int, Any]:
        """GET a view: (HTTP status, JSON body or text)."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()

    def wait_ready(self, limit_s: float = 60.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            assert self.alive, self.log_tail()
            try:
                if self.get("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"analytics not ready in {limit_s} s:\n{self.log_tail()}")

    def query(self, sql: str) -> list[dict[str, str]]:
        """`stt-pipeline analytics query --csv SQL` (the CLI, as an analyst runs it), rows as dicts of text."""
        import csv
        import io

        done = subprocess.run(
            [STT_PIPELINE, "analytics", "query", "--csv", sql],
            env=config_env(self.config),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return list(csv.DictReader(io.StringIO(done.stdout)))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
