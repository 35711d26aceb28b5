"""Fault-injection suite: delivery guarantees under failure."""
