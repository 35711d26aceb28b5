"""Worker settings for tests: unique topics and group per call, pointed at a test emulator.

Built from the defaults, not from this process's environment, so a developer's shell cannot change a test.
"""

from __future__ import annotations

import uuid
from typing import Any

from pipeline.settings import Settings


def worker_config(bootstrap: str, stt_base_url: str, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "stt_base_url": stt_base_url,
        "api_key": "test-key",
        "audio_topic": f"audio-{tag}",
        "turns_topic": f"turns-{tag}",
        "transcripts_topic": f"transcripts-{tag}",
        "sessions_topic": f"sessions-{tag}",
        "dead_letter_topic": f"dead-{tag}",
        "group_id": f"group-{tag}",
    }
    return Settings.load(env={}).replace(**{**values, **overrides})
