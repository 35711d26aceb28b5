"""When each owned partition commits: once per commit interval, the partitions spread over it.

Every partition committing at the same instant makes a burst once per interval: N transactions' broker
round trips at once, and N commit plans built in one go on the event loop, which every session's
pacing waits behind. Spread over the interval, each partition still commits once per interval (a
record waits at most one interval plus a commit, as before), and each burst is one partition's.

Sans-I/O: the worker's commit loop asks :meth:`CommitCadence.due` which partitions to commit now and
sleeps until :meth:`CommitCadence.next_wake` (or until a running commit ends).
"""

from __future__ import annotations

from collections.abc import Collection


class CommitCadence:
    """Each partition's next commit time, on the caller's clock (seconds)."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"the commit interval must be positive, not {interval_s}")
        self.interval_s = interval_s
        self._due: dict[int, float] = {}

    def due(self, now: float, owned: Collection[int], busy: Collection[int] = ()) -> list[int]:
        """The partitions to commit now, earliest first, and their next commit set one interval on
        (or to now, if that is already past: a commit that took longer is followed by the next at once).

        Partitions no longer ``owned`` are forgotten. Newly owned ones are spread over the next
        interval, the k-th of m at ``now + interval * k / m``. A partition in ``busy`` (its last commit
        still running) is not returned; it is due again as soon as it is not busy."""
        for partition in [p for p in self._due if p not in owned]:
            del self._due[partition]
        new = sorted(p for p in owned if p not in self._due)
        for k, partition in enumerate(new, start=1):
            self._due[partition] = now + self.interval_s * k / len(new)
        ready = sorted((p for p, at in self._due.items() if at <= now and p not in busy), key=self._due.__getitem__)
        for partition in ready:
            self._due[partition] = max(self._due[partition] + self.interval_s, now)
        return ready

    def next_wake(self, now: float, busy: Collection[int] = ()) -> float:
        """When :meth:`due` next has something to return, unless a busy partition ends first (then it
        is due at once): the earliest next commit of a partition not busy; one interval on if none."""
        times = [at for p, at in self._due.items() if p not in busy]
        return max(now, min(times)) if times else now + self.interval_s
