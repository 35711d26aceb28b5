"""The Kafka edge: topic setup, per-partition transactions, checkpoint loading (aiokafka)."""
