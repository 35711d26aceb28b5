"""`make bench`: the worker and a naive bridge side by side, same broker, same emulator, same load.

Modules: :mod:`bench.scripts` (session scripts), :mod:`bench.load` (the load generator process),
:mod:`bench.worker_peer` and :mod:`bench.naive_bridge` (the two peers, each its own process),
:mod:`bench.stats` (histograms, quantiles, /proc), :mod:`bench.procs` (broker, emulator, children),
:mod:`bench.compare` (one run: levels, peers, the table).
"""
