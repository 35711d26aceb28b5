"""stt-pipeline: Kafka audio topics → paced STT WebSockets → normalized turn events and transcripts."""

__version__ = "0.1.0"
