"""Figures: prometheus histograms as plain values (cumulative buckets, diffable), exact quantiles, /proc readings."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry


@dataclass
class Histogram:
    """Cumulative bucket counts (by upper bound, ascending, +Inf last), count and sum of one histogram."""

    bounds: list[float]
    counts: list[float]
    count: float
    total: float

    def minus(self, before: Histogram) -> Histogram:
        return Histogram(
            self.bounds,
            [a - b for a, b in zip(self.counts, before.counts, strict=True)],
            self.count - before.count,
            self.total - before.total,
        )

    def quantile(self, q: float, first_lower: float | None = None) -> float | None:
        """The ``q`` quantile, linearly interpolated inside its bucket; ``inf`` in the +Inf bucket.
        ``first_lower`` is the assumed lower edge of the first bucket (default: its upper bound)."""
        if self.count <= 0:
            return None
        rank = q * self.count
        previous = 0.0
        for i, (bound, count) in enumerate(zip(self.bounds, self.counts, strict=True)):
            if count >= rank and count > previous:
                if math.isinf(bound):
                    return math.inf
                lower = (bound if first_lower is None else first_lower) if i == 0 else self.bounds[i - 1]
                return lower + (bound - lower) * (rank - previous) / (count - previous)
            previous = count
        return math.inf

    def share_above(self, bound: float) -> float:
        """Fraction of observations above the bucket bound ``bound`` (one of the bounds)."""
        if self.count <= 0:
            return 0.0
        return (self.count - self.counts[self.bounds.index(bound)]) / self.count

    def to_dict(self) -> dict[str, Any]:
        return {"bounds": self.bounds, "counts": self.counts, "count": self.count, "total": self.total}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        return cls([float(b) for b in d["bounds"]], d["counts"], d["count"], d["total"])


def read_histogram(registry: CollectorRegistry, name: str) -> Histogram:
    """A histogram from the registry, summed over its label sets (e.g. every GC generation)."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name == f"{name}_count":
                count += sample.value
            elif sample.name == f"{name}_sum":
                total += sample.value
    if not buckets:
        raise KeyError(f"histogram {name} not in the registry")
    bounds = sorted(buckets)
    return Histogram(bounds, [buckets[b] for b in bounds], count, total)


def exact(values: Sequence[float]) -> dict[str, float | None]:
    """n, p50, p99 and max of raw values."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p99": None, "max": None}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": ordered[-1]}


def from_histogram(h: Histogram, scale: float, first_lower: float | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {"n": h.count}
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        value = h.quantile(q, first_lower)
        out[label] = None if value is None else value * scale
    return out


def proc_cpu_s(pid: int | None) -> float | None:
    """utime + stime of a process, from /proc (None if unavailable)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
