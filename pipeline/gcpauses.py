"""The cyclic garbage collector's pauses: start-up objects frozen out of its scans, every pause observed.

While CPython's collector runs, nothing else in the process does: no frame is sent, for any session.
A full (generation 2) collection walks every tracked object; in a worker serving 150 sessions most of
those are the start-up objects (modules, classes, the clients), which are never garbage. Measured with
the bench at 150 sessions, one full collection stopped the worker for 81 ms; with the start-up objects
frozen (:func:`gc.freeze`) it took 14 ms. :func:`settle` freezes them once the worker has started, once
per process, and :func:`observe` exports every collection's pause as ``stt_gc_pause_seconds`` (by
generation), so pacing stalls can be told apart from CPU starvation.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from pipeline import metrics

_state: dict[str, Any] = {"frozen": False, "observed": False, "started": 0.0}


def settle() -> None:
    """Freeze everything the collector tracks now (the worker has started), the first time only: later
    workers in the same process (tests) must not freeze their predecessors' garbage."""
    if not _state["frozen"]:
        _state["frozen"] = True
        gc.collect()
        gc.freeze()


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _state["started"] = time.perf_counter()
    else:
        metrics.GC_PAUSE_S.labels(str(info["generation"])).observe(time.perf_counter() - _state["started"])


def observe() -> None:
    """Observe every collection's pause from now on (once per process)."""
    if not _state["observed"]:
        _state["observed"] = True
        gc.callbacks.append(_on_collection)
