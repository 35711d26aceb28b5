"""An in-process worker for integration tests: started on demand, read through ``Worker.snapshot()``."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from pipeline.kafka.topics import ensure_topics
from pipeline.sessions import Connect
from pipeline.settings import Settings
from pipeline.worker import Worker
from tests.support.scripts import Record


class WorkerHarness:
    """Starts an in-process worker on demand, so a test can fill the input topic first (a backlog)."""

    def __init__(self, config: Settings, *, connect: Connect | None = None) -> None:
        self.config = config
        self.worker = Worker(config, connect=connect)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        await ensure_topics(self.config)

    async def start(self) -> Worker:
        self._task = asyncio.create_task(self.worker.run(self._stop))
        for _ in range(300):  # until partitions are assigned
            if self.worker.snapshot().partitions or self._task.done():
                break
            await asyncio.sleep(0.05)
        assert not self._task.done(), self._task.exception()
        return self.worker

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 60)


async def produce(bootstrap: str, topic: str, records: list[Record], *, partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for key, headers, value in records:
            await producer.send(topic, value=value, key=key, headers=headers, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
