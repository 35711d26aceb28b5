"""Unit tests: pure, sans-I/O modules driven with explicit inputs and an injected clock."""
