"""The analytics side: a Faust app over the worker's output topics (live sessions, per-minute counters,
a dashboard) and an embedded DuckDB store for analysts. Needs the ``analytics`` extra."""
