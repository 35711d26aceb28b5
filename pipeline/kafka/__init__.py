"""The Kafka edge: topic setup and the output publisher (aiokafka)."""
