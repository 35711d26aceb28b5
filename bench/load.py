"""The load generator (its own process): every session's `stt.audio` records on one absolute clock.

``python -m bench.load SPEC.json``. One shared producer and one scheduler for all sessions (a
producer per session would make the load generator, not the peer, the bottleneck at a few hundred
sessions). Each session's records go out at their planned audio time (``--chunk-ms`` chunks, then
``end``), sessions staggered by ``stagger_ms``. Prints ``started`` when the first record is due, then
one JSON report: CPU, lateness of sends against the schedule, and the wall time each ``end`` went out.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaProducer

from pipeline.audio import Encoding
from pipeline.emulator.engines.tones import synthesize
from pipeline.tools.produce import plan_records

Due = tuple[float, int, int]  # (due time from the start in s, session index, record index)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    encoding = cast(Encoding, spec["encoding"])
    rate, chunk_ms, stagger_s = spec["sample_rate"], spec["chunk_ms"], spec["stagger_ms"] / 1000.0
    sessions = spec["sessions"]
    plans = [
        plan_records(synthesize(s["script"], rate, encoding), encoding=encoding, sample_rate=rate, chunk_ms=chunk_ms)
        for s in sessions
    ]
    keys = [s["session_id"].encode() for s in sessions]
    heap: list[Due] = [(i * stagger_s + p[0].at_ms / 1000.0, i, 0) for i, p in enumerate(plans)]
    heapq.heapify(heap)
    producer = AIOKafkaProducer(bootstrap_servers=spec["bootstrap"], linger_ms=5, acks=1)
    await producer.start()
    await producer.partitions_for(spec["topic"])  # metadata before the clock starts
    late: list[float] = []
    end_at: dict[str, float] = {}
    cpu0 = time.process_time()
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2
    print("started", flush=True)
    try:
        while heap:
            due, i, j = heap[0]
            wait = t0 + due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            now = loop.time()
            while heap and t0 + heap[0][0] <= now:
                due, i, j = heapq.heappop(heap)
                record = plans[i][j]
                headers = [(k, v.encode()) for k, v in record.headers.items()]
                await producer.send(spec["topic"], value=record.value, key=keys[i], headers=headers)
                late.append((now - (t0 + due)) * 1000.0)
                if record.headers["type"] == "end":
                    end_at[sessions[i]["session_id"]] = time.time()
                if j + 1 < len(plans[i]):
                    heapq.heappush(heap, (i * stagger_s + plans[i][j + 1].at_ms / 1000.0, i, j + 1))
        await producer.flush()
    finally:
        await producer.stop()
    late.sort()
    return {
        "cpu_s": time.process_time() - cpu0,
        "late_ms_p99": late[int(0.99 * (len(late) - 1))] if late else None,
        "late_ms_max": late[-1] if late else None,
        "end_at": end_at,
    }


def main() -> None:
    report = asyncio.run(run(json.loads(Path(sys.argv[1]).read_text())))
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
