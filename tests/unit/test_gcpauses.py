"""Garbage-collector pauses: observed as ``stt_gc_pause_seconds`` by generation; start-up frozen once."""

from __future__ import annotations

import gc

from pipeline import gcpauses, metrics


def count(generation: str) -> float:
    value = metrics.REGISTRY.get_sample_value("stt_gc_pause_seconds_count", {"generation": generation})
    assert value is not None  # every generation is exported from the start
    return value


def test_every_collection_is_observed_by_generation() -> None:
    gcpauses.observe()
    gcpauses.observe()  # once per process: a second call adds no second observer
    before = {g: count(g) for g in "012"}
    gc.collect(0)
    gc.collect(2)
    assert count("0") - before["0"] >= 1
    assert count("2") - before["2"] == 1
    assert metrics.REGISTRY.get_sample_value("stt_gc_pause_seconds_sum", {"generation": "2"}) > 0


def test_start_up_is_frozen_once_per_process() -> None:
    gcpauses.settle()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    garbage_to_be = [[] for _ in range(1000)]
    gcpauses.settle()  # a second worker in the same process freezes nothing more
    assert gc.get_freeze_count() == frozen
    del garbage_to_be
