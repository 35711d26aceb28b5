"""Worker configuration: flag beats environment beats default; the API key never shows."""

from __future__ import annotations

import argparse

from pipeline.config import SETTINGS, WorkerConfig, add_arguments, from_env


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_match_the_dataclass_and_every_setting_has_a_flag() -> None:
    assert from_env(parse(), env={}) == WorkerConfig()
    flags = vars(parse())
    assert set(flags) == set(SETTINGS) == set(WorkerConfig.__dataclass_fields__)


def test_environment_then_flags() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "STT_FRAME_MS": "50",
        "STT_CREATE_TOPICS": "false",
        "STT_MAX_SESSIONS": "7",
        "CARTESIA_API_KEY": "sk-env",
    }
    config = from_env(parse(), env=env)
    assert (config.bootstrap_servers, config.frame_ms, config.create_topics, config.max_sessions) == (
        "kafka:9092",
        50.0,
        False,
        7,
    )
    flagged = from_env(parse("--frame-ms", "200", "--create-topics", "--bootstrap-servers", "b:1"), env=env)
    assert (flagged.frame_ms, flagged.create_topics, flagged.bootstrap_servers) == (200.0, True, "b:1")
    assert "sk-env" not in repr(flagged) and flagged.api_key == "sk-env"
