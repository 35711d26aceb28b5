"""The worker's small HTTP server: ``/metrics``, ``/healthz``, ``/readyz``, ``/status``.

It runs on its own thread (stdlib :class:`~http.server.ThreadingHTTPServer`), not on the worker's
event loop: a blocked loop must still get an answer, ``/healthz`` 503, rather than a probe timeout.
Everything about the worker is read on the worker's loop (:meth:`Worker.snapshot` scheduled there with
``call_soon_threadsafe``) and waited for at most ``health_deadline_s``; an unanswered wait *is* the
liveness failure.

- ``/metrics``: Prometheus text of :data:`pipeline.metrics.REGISTRY` and the worker's
  :class:`~pipeline.metrics.WorkerCollector`.
- ``/healthz``: 200 when the loop answers within the deadline and the consumer task is alive, else 503.
- ``/readyz``: :func:`pipeline.health.readiness`; 503 with ``{"ready": false, "reason": ...}``.
- ``/status``: ``Worker.snapshot().to_dict()`` as JSON.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pipeline import metrics
from pipeline.health import Verdict, readiness
from pipeline.snapshot import WorkerSnapshot

log = logging.getLogger("pipeline.endpoints")


class Snapshots(Protocol):
    def snapshot(self) -> WorkerSnapshot: ...


class StatusServer:
    """Serves one worker. :meth:`start` binds (an ``OSError`` if the port is taken) and returns the port."""

    def __init__(
        self,
        worker: Snapshots,
        loop: asyncio.AbstractEventLoop,
        *,
        host: str,
        port: int,
        deadline_s: float,
        stt_window_s: float,
        alive: Callable[[], bool],
    ) -> None:
        self._worker, self._loop = worker, loop
        self._host, self._port = host, port
        self._deadline_s, self._stt_window_s = deadline_s, stt_window_s
        self._alive = alive
        self._started = time.time()
        self._registry = CollectorRegistry()
        self._registry.register(metrics.WorkerCollector(self.snapshot))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> int:
        server = ThreadingHTTPServer((self._host, self._port), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="stt-http", daemon=True)
        self._thread.start()
        log.info("HTTP server on %s:%d (/metrics /healthz /readyz /status)", self._host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # -- answers (called on the server's threads) --------------------------------------------------

    def snapshot(self) -> WorkerSnapshot | None:
        """The worker's snapshot, taken on its loop; None if the loop does not answer in time."""
        answer: concurrent.futures.Future[WorkerSnapshot] = concurrent.futures.Future()

        def take() -> None:
            if answer.set_running_or_notify_cancel():
                try:
                    answer.set_result(self._worker.snapshot())
                except Exception as exc:
                    answer.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(take)
            return answer.result(timeout=self._deadline_s)
        except (concurrent.futures.TimeoutError, RuntimeError):  # RuntimeError: the loop is closed
            answer.cancel()
            return None

    def health(self) -> Verdict:
        if not self._alive():
            return Verdict(False, "the consumer task has stopped")
        if self.snapshot() is None:
            return Verdict(False, f"the event loop did not answer within {self._deadline_s:g} s")
        return Verdict(True, "ok")

    def ready(self) -> Verdict:
        if not self._alive():
            return Verdict(False, "the consumer task has stopped")
        snap = self.snapshot()
        if snap is None:
            return Verdict(False, f"the event loop did not answer within {self._deadline_s:g} s")
        return readiness(snap, now=time.time(), stt_window_s=self._stt_window_s, started=self._started)

    def metrics_text(self) -> bytes:
        return generate_latest(metrics.REGISTRY) + generate_latest(self._registry)


def _handler(server: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, server.metrics_text(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                verdict = server.health() if path == "/healthz" else server.ready()
                key = "healthy" if path == "/healthz" else "ready"
                self._json(200 if verdict.ok else 503, {key: verdict.ok, "reason": verdict.reason})
            elif path == "/status":
                snap = server.snapshot()
                if snap is None:
                    self._json(503, {"reason": "the event loop did not answer"})
                else:
                    self._json(200, snap.to_dict())
            else:
                self._json(404, {"reason": "not found: /metrics /healthz /readyz /status"})

        def _json(self, status: int, body: Any) -> None:
            self._send(status, orjson.dumps(body), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
