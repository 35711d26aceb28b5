"""The worker as a bench peer (its own process): ``python -m bench.worker_peer SPEC.json``.

Runs :class:`~pipeline.worker.Worker` in this process with the spec's settings, reads it only through
:meth:`Worker.snapshot` and the metrics registry, and reports the level's histograms (pacing drift,
event → acked, event → committed, close → final), its counters and its memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import peer
from bench.stats import read_histogram
from pipeline import metrics
from pipeline.settings import Settings
from pipeline.worker import Worker

HISTOGRAMS = {
    "drift_s": "stt_pacing_drift_seconds",
    "event_to_ack_s": "stt_event_to_ack_seconds",
    "event_to_commit_s": "stt_event_to_commit_seconds",
    "close_to_final_s": "stt_close_to_final_seconds",
    "transaction_s": "stt_transaction_seconds",
    "gc_pause_s": "stt_gc_pause_seconds",
}


async def run(settings: Settings) -> dict[str, Any]:
    worker = Worker(settings)
    stop, sampling = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    while not (worker.snapshot().joined and worker.snapshot().partitions):
        if task.done():
            task.result()
            raise RuntimeError("the worker stopped while starting")
        await asyncio.sleep(0.05)
    peer.say("ready")
    memory = peer.Memory()

    def read() -> tuple[int, int]:
        sessions = worker.snapshot().sessions
        return len(sessions), sum(s.held_bytes + s.queued_bytes for s in sessions)

    sampler = asyncio.create_task(peer.sample_every(memory, read, sampling))
    await peer.wait_for_stop()
    sampling.set()
    await sampler
    stop.set()
    await asyncio.wait_for(task, 60)
    snapshot = worker.snapshot()
    return {
        "histograms": {k: read_histogram(metrics.REGISTRY, name).to_dict() for k, name in HISTOGRAMS.items()},
        "counters": snapshot.to_dict()["counters"],
        "silence_fill_s": sum(
            m.value for f in metrics.REGISTRY.collect() for m in f.samples if m.name == "stt_silence_sent_seconds_total"
        ),
        "memory": memory.__dict__,
    }


def main() -> None:
    peer.main_with_settings(run)


if __name__ == "__main__":
    main()
