"""Tests of stt-pipeline."""
