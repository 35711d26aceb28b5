"""The output publisher: serializes records with orjson and sends them in order, tracking acks.

Records are queued synchronously (sessions emit from plain callbacks) and sent by one task, so the
order of a session's records is the order of :meth:`Publisher.publish` calls. Each call returns an
:class:`Acks` handle that resolves when the broker acknowledged every record in it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer


class Acks:
    """The acknowledgements of one batch of records."""

    def __init__(self, count: int) -> None:
        self._left = count
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if count == 0:
            self.done.set_result(None)

    def _ack(self, error: BaseException | None) -> None:
        if self.done.done():
            return
        if error is not None:
            self.done.set_exception(error)
            return
        self._left -= 1
        if self._left == 0:
            self.done.set_result(None)


class Publisher:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._queue: asyncio.Queue[tuple[str, bytes | None, bytes, Acks]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="publisher")

    async def stop(self) -> None:
        """Send what is queued, wait for the acks, stop the sending task."""
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.producer.flush()

    def publish(self, records: list[tuple[str, str | None, Mapping[str, Any]]]) -> Acks:
        """Queue ``(topic, key, record)`` items; the returned handle resolves when all are acked."""
        acks = Acks(len(records))
        for topic, key, record in records:
            self._queue.put_nowait((topic, None if key is None else key.encode(), orjson.dumps(record), acks))
        return acks

    async def _run(self) -> None:
        while True:
            topic, key, value, acks = await self._queue.get()
            try:
                future = await self.producer.send(topic, value=value, key=key)
            except Exception as exc:
                self.failed = exc
                acks._ack(exc)
            else:
                future.add_done_callback(lambda f, a=acks: a._ack(f.exception()))
                self.sent += 1
            finally:
                self._queue.task_done()
