"""The benchmark reads the worker's histograms by name: every name it reads must exist (a rename broke it once)."""

from __future__ import annotations

import pytest

from bench.stats import read_histogram
from bench.worker_peer import HISTOGRAMS
from pipeline import metrics


@pytest.mark.parametrize("name", sorted(HISTOGRAMS.values()))
def test_every_histogram_the_bench_reads_exists(name: str) -> None:
    histogram = read_histogram(metrics.REGISTRY, name)
    assert histogram.bounds[-1] == float("inf")
