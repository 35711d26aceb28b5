"""Shared test support: a real Kafka broker per test session and its pytest fixtures."""
