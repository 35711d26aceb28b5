"""Deprecated: use :mod:`pipeline.settings`. Kept only until pipeline/worker.py imports Settings."""

from pipeline.settings import Settings as WorkerConfig

__all__ = ["WorkerConfig"]
