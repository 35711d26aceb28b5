"""A real single-node Kafka broker (KRaft) for tests, driven through ``infra/kafka/kafka.sh``.

Each :class:`KafkaBroker` owns one broker process on two free loopback ports with its own temporary
data directory, so test sessions never share (or trample) a broker. ``restart()`` keeps the data,
which is what broker-outage / recovery tests need.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO_ROOT / "infra" / "kafka" / "kafka.sh"

# `up` may first have to fetch the broker's jars with Maven on a fresh machine; readiness itself is
# bounded by KAFKA_START_TIMEOUT inside the script.
_UP_TIMEOUT_S = 900.0
_DOWN_TIMEOUT_S = 90.0


def free_ports(count: int) -> list[int]:
    """Ask the OS for ``count`` distinct free TCP ports on 127.0.0.1.

    All sockets are held open until every port is chosen, so the ports are distinct.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs.

    An exited, not yet reaped process (zombie) counts as dead once all its threads are gone: a JVM's
    main thread turns zombie while its other threads are still exiting and holding its sockets.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (OSError, IndexError):
        return False


class KafkaBrokerError(RuntimeError):
    """``kafka.sh`` failed; the message carries its output (including the broker's last log lines)."""


class KafkaBroker:
    """One broker process started with ``kafka.sh up`` and stopped with ``kafka.sh down``.

    Use :meth:`external` to wrap an already-running broker that this object must not manage.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        data_dir: Path | None = None,
        start_timeout_s: int = 120,
        security: str = "plaintext",
        topic_partitions: int = 2,
        jvm_opts: str | None = None,
    ) -> None:
        """``security``: plaintext, sasl_ssl or ssl (kafka.sh ``KAFKA_SECURITY``); a secured broker creates the
        worker's default topics with ``topic_partitions`` and writes ``client.env`` (see :meth:`client_env`).
        ``jvm_opts``: extra JVM flags (kafka.sh ``KAFKA_JVM_OPTS``; None: the environment's)."""
        if port is None or controller_port is None:
            p, c = free_ports(2)
            port = port if port is not None else p
            controller_port = controller_port if controller_port is not None else c
        self.port = port
        self.controller_port = controller_port
        self._owns_data_dir = data_dir is None
        self.data_dir = data_dir if data_dir is not None else Path(tempfile.mkdtemp(prefix="stt-kafka-"))
        self.start_timeout_s = start_timeout_s
        self.security = security
        self.topic_partitions = topic_partitions
        self.jvm_opts = jvm_opts
        self.managed = True
        self.last_start_seconds: float | None = None
        self._running = False
        self._atexit_registered = False
        self._external_bootstrap: str | None = None

    @classmethod
    def external(cls, bootstrap: str) -> KafkaBroker:
        """A handle on a broker someone else runs: ``start``/``stop`` are no-ops, ``restart`` raises."""
        broker = cls.__new__(cls)
        first = bootstrap.split(",")[0].strip()
        port = first.rsplit(":", 1)[1] if ":" in first else ""
        broker.port = int(port) if port.isdigit() else -1
        broker.controller_port = -1
        broker._owns_data_dir = False
        broker.data_dir = Path()
        broker.start_timeout_s = 0
        broker.security = "plaintext"
        broker.topic_partitions = 0
        broker.managed = False
        broker.last_start_seconds = None
        broker._running = True
        broker._atexit_registered = False
        broker._external_bootstrap = bootstrap
        return broker

    @property
    def bootstrap(self) -> str:
        if self._external_bootstrap is not None:
            return self._external_bootstrap
        return f"127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """A secured broker's client settings for the ``stt-worker`` user (the ``KAFKA_*`` variables)."""
        lines = (self.data_dir / "client.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    @property
    def server_log(self) -> Path:
        return self.data_dir / "server.log"

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KAFKA_CLEAN", None)
        env.update(
            KAFKA_PORT=str(self.port),
            KAFKA_CONTROLLER_PORT=str(self.controller_port),
            KAFKA_DATA_DIR=str(self.data_dir),
            KAFKA_START_TIMEOUT=str(self.start_timeout_s),
            KAFKA_SECURITY=self.security,
            STT_TOPIC_PARTITIONS=str(self.topic_partitions),
        )
        if self.jvm_opts is not None:
            env["KAFKA_JVM_OPTS"] = self.jvm_opts
        env.update(extra)
        return env

    def _run(self, command: str, timeout: float, **extra_env: str) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                ["bash", str(KAFKA_SH), command],
                env=self._env(**extra_env),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
            raise KafkaBrokerError(f"kafka.sh {command} timed out after {timeout}s\n{stderr or ''}") from exc
        if proc.returncode != 0:
            raise KafkaBrokerError(
                f"kafka.sh {command} failed with exit code {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
            )
        return proc

    def start(self) -> KafkaBroker:
        """Start the broker and return once it accepts requests (idempotent)."""
        if not self.managed:
            return self
        if not self._atexit_registered:
            # Safety net: never leave a broker JVM behind if the session dies without teardown.
            atexit.register(self.stop)
            self._atexit_registered = True
        t0 = time.monotonic()
        self._run("up", _UP_TIMEOUT_S)
        self.last_start_seconds = time.monotonic() - t0
        self._running = True
        return self

    def _down(self, *, clean: bool) -> None:
        self._run("down", _DOWN_TIMEOUT_S, KAFKA_CLEAN="1" if clean else "0")
        self._running = False

    def stop(self) -> None:
        """Stop the broker and delete its data (idempotent; safe to call on a never-started broker)."""
        if not self.managed:
            return
        try:
            if self._running or (self.data_dir / "kafka.pid").exists():
                self._down(clean=self._owns_data_dir)
        finally:
            self._running = False
            if self._owns_data_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self) -> KafkaBroker:
        """Stop the broker (gracefully) and start it again on the same ports, keeping its data."""
        if not self.managed:
            raise KafkaBrokerError(f"cannot restart the external broker at {self.bootstrap}")
        self._down(clean=False)
        return self.start()

    def kill(self) -> None:
        """SIGKILL the broker (a crash, not a clean shutdown); data is kept, ``start()`` brings it back.

        Caveat, observed with Kafka 4.3.1 in this single-node combined (broker+controller) setup: a
        transaction whose commit was acknowledged but whose COMMIT markers were not yet written when
        the broker died is never completed. On restart the transaction coordinator retries the
        markers while the new process is still waiting to re-register (the old incarnation's session
        must expire first); when the controller then fences the old incarnation, the partition is
        briefly leaderless and the coordinator drops the markers ("Couldn't find leader endpoint ...
        likely deleted already and hence can be skipped"). The partition is left with a hanging
        transaction: its last stable offset stays put and ``read_committed`` consumers stall there.
        Crash tests that must not hit this should wait for LSO == high watermark before killing.
        A graceful ``restart()`` does not have this problem.
        """
        if not self.managed:
            raise KafkaBrokerError(f"cannot kill the external broker at {self.bootstrap}")
        pid_file = self.data_dir / "kafka.pid"
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline")
        if not (_pid_alive(pid) and b"kafka.Kafka" in cmdline.read_bytes()):
            raise KafkaBrokerError(f"pid {pid} from {pid_file} is not this broker")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                raise KafkaBrokerError(f"broker pid {pid} survived SIGKILL for 30s")
            time.sleep(0.05)
        pid_file.unlink(missing_ok=True)
        self._running = False

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        kind = "managed" if self.managed else "external"
        return f"KafkaBroker({kind}, bootstrap={self.bootstrap!r}, data_dir={str(self.data_dir)!r})"
