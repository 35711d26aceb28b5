"""A worker configuration for tests: unique topics and group per call, pointed at a test emulator."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from pipeline.config import WorkerConfig


def worker_config(bootstrap: str, stt_base_url: str, **overrides: Any) -> WorkerConfig:
    tag = uuid.uuid4().hex[:8]
    config = WorkerConfig(
        bootstrap_servers=bootstrap,
        stt_base_url=stt_base_url,
        api_key="test-key",
        audio_topic=f"audio-{tag}",
        turns_topic=f"turns-{tag}",
        transcripts_topic=f"transcripts-{tag}",
        sessions_topic=f"sessions-{tag}",
        dead_letter_topic=f"dead-{tag}",
        group_id=f"group-{tag}",
    )
    return replace(config, **overrides)
