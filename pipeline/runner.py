"""The asyncio driver of one :class:`~pipeline.session.Session`: its STT socket, its timers.

It is the session's only I/O: open the socket, send what :meth:`Session.poll` says when
:meth:`Session.next_wakeup` says, feed every server frame (text or binary) to the session, and hand
what :meth:`Session.take` returns (outputs and the checkpoint that counts them) to ``emit`` as soon as
there are outputs. ``notify()`` wakes it when new input arrived.

A refused or failed connection becomes a :class:`~pipeline.errors.ProviderError` (a refused upgrade:
:meth:`~pipeline.errors.ProviderError.from_handshake`; unreachable, timed out or a broken handshake:
:meth:`~pipeline.errors.ProviderError.transport`) and the session applies the one retry rule. When
the session asks for a reconnect, the runner waits an exponential backoff with jitter, lets the
session rewind to its resume point and opens a fresh socket; the session bounds the number of attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from pipeline import metrics
from pipeline.errors import ProviderError
from pipeline.session import Session, Taken
from pipeline.stt.client import send_now

log = logging.getLogger("pipeline.runner")


class SessionRunner:
    def __init__(
        self,
        session: Session,
        *,
        connect: Callable[[], Awaitable[ClientConnection]],
        emit: Callable[[Taken], None],
        input_live: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.session = session
        self._connect = connect
        self._emit = emit
        self._input_live = input_live
        self._now = clock
        self._wake = asyncio.Event()
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._errors_counted = 0
        self._anomalies_counted: Counter[str] = Counter()

    def notify(self) -> None:
        """New input for the session: re-evaluate what to send now."""
        self._wake.set()

    def _flush(self) -> None:
        if self.session.has_outputs:
            self._emit(self.session.take())

    def _count(self) -> None:
        """Export what the session saw since the last call: provider errors, normalizer anomalies (both
        change only with what the server sends or a connection's end, so not after every paced frame)."""
        session = self.session
        if session.errors > self._errors_counted and session.last_error is not None:
            metrics.STT_ERRORS.labels(metrics.error_code(session.last_error)).inc(session.errors - self._errors_counted)
            self._errors_counted = session.errors
        anomalies = session.anomalies()
        for kind, count in (anomalies - self._anomalies_counted).items():
            metrics.ANOMALIES.labels(kind).inc(count)
        self._anomalies_counted = anomalies

    async def run(self) -> None:
        session = self.session
        while not session.ended:
            await self._connection()
            self._flush()
            self._count()
            if session.ended or not session.needs_reconnect:
                return
            attempt = session.reconnects + 1
            delay = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            cause = metrics.reconnect_cause(session.last_error)
            metrics.RECONNECTS.labels(cause).inc()
            log.info("session %s: reconnecting (%s) in %.2f s (attempt %d)", session.session_id, cause, delay, attempt)
            await asyncio.sleep(delay)
            session.reconnect()
            self._flush()

    async def _connection(self) -> None:
        """One socket's life: connect, write and read until the session ends or needs a new socket."""
        session = self.session
        try:
            ws = await self._connect()
        except InvalidStatus as exc:
            response = exc.response
            session.connect_failed(ProviderError.from_handshake(response.status_code, bytes(response.body or b"")))
            return
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            session.connect_failed(ProviderError.transport(repr(exc)))
            return
        reader = asyncio.create_task(self._read(ws))
        try:
            await self._write(ws)
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

    async def _write(self, ws: ClientConnection) -> None:
        session = self.session
        while not session.ended and not session.needs_reconnect:
            now = self._now()
            session.check_deadline(now)
            if session.ended:
                return
            items = session.poll(now, input_live=self._input_live())
            for drift in session.drifts_ms:
                metrics.PACING_DRIFT_S.observe(drift / 1000)
            for item in items:
                if isinstance(item, bytes) and send_now(ws, item):
                    continue
                try:
                    await ws.send(item)
                except ConnectionClosed:
                    break  # the reader reports how the socket closed
            self._flush()
            await self._sleep(session.next_wakeup(self._now()))

    async def _sleep(self, wake_at: float | None) -> None:
        """Until ``wake_at`` (on this runner's clock) or ``notify()``: one timer, no timeout context."""
        if not self._wake.is_set():
            timer = None
            if wake_at is not None:
                loop = asyncio.get_running_loop()
                timer = loop.call_at(loop.time() + max(0.0, wake_at - self._now()), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()
        self._wake.clear()

    async def _read(self, ws: ClientConnection) -> None:
        session = self.session
        try:
            async for message in ws:
                session.on_message(message)
                self._flush()
                self._count()
                if session.ended or session.needs_reconnect:
                    return
        except ConnectionClosed:
            pass
        finally:
            if not session.ended and not session.needs_reconnect:
                rcvd = ws.protocol.close_rcvd
                session.on_closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
                self._flush()
                self._count()
            self._wake.set()
