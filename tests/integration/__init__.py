"""Integration tests: real processes (Kafka broker, emulator) on the loopback interface."""
