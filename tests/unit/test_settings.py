"""Worker settings: names, precedence (flag > variable > default), validation naming the variable, and the
API key never showing (reprs, errors, --help), never taken from a flag."""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline import cli
from pipeline.emulator.cli import listen_address
from pipeline.settings import (
    KAFKA_SECURITY_FIELDS,
    Settings,
    SettingsError,
    add_arguments,
    env_name,
    flag,
    is_secret,
    log_format,
    log_level,
)
from pipeline.stt.client import open_socket

STT_PIPELINE = str(Path(sys.executable).with_name("stt-pipeline"))
SECRET = "sk-do-not-show-3f9c"

# The documented variables (README "The worker" and the new ones): a rename must fail here.
DOCUMENTED = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "sasl_password_file": "KAFKA_SASL_PASSWORD_FILE",
    "sasl_oauth_token_file": "KAFKA_SASL_OAUTH_TOKEN_FILE",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
    "ssl_certfile": "KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "KAFKA_SSL_KEYFILE",
    "ssl_check_hostname": "KAFKA_SSL_CHECK_HOSTNAME",
    "stt_base_url": "STT_BASE_URL",
    "api_key": "CARTESIA_API_KEY",
    "api_key_file": "CARTESIA_API_KEY_FILE",
    "audio_topic": "STT_AUDIO_TOPIC",
    "turns_topic": "STT_TURNS_TOPIC",
    "transcripts_topic": "STT_TRANSCRIPTS_TOPIC",
    "sessions_topic": "STT_SESSIONS_TOPIC",
    "dead_letter_topic": "STT_DEAD_LETTER_TOPIC",
    "group_id": "STT_GROUP_ID",
    "frame_ms": "STT_FRAME_MS",
    "max_lead_ms": "STT_MAX_LEAD_MS",
    "silence_budget_ms": "STT_SILENCE_BUDGET_MS",
    "drain_deadline_s": "STT_DRAIN_DEADLINE_S",
    "commit_interval_ms": "STT_COMMIT_INTERVAL_MS",
    "eager_sends": "STT_EAGER_SENDS",
    "uvloop": "STT_UVLOOP",
    "group_instance_id": "STT_GROUP_INSTANCE_ID",
    "session_timeout_ms": "STT_SESSION_TIMEOUT_MS",
    "revoke_grace_s": "STT_REVOKE_GRACE_S",
    "replay_margin_ms": "STT_REPLAY_MARGIN_MS",
    "max_reconnects": "STT_MAX_RECONNECTS",
    "max_sessions": "STT_MAX_SESSIONS",
    "pause_high_bytes": "STT_PAUSE_HIGH_BYTES",
    "pause_low_bytes": "STT_PAUSE_LOW_BYTES",
    "session_idle_timeout_s": "STT_SESSION_IDLE_TIMEOUT_S",
    "session_max_s": "STT_SESSION_MAX_S",
    "lag_threshold": "STT_LAG_THRESHOLD",
    "topic_partitions": "STT_TOPIC_PARTITIONS",
    "topic_replication": "STT_TOPIC_REPLICATION",
    "retention_ms": "STT_RETENTION_MS",
    "create_topics": "STT_CREATE_TOPICS",
    "stt_version": "STT_CARTESIA_VERSION",
    "http_host": "STT_HTTP_HOST",
    "http_port": "STT_HTTP_PORT",
    "health_deadline_s": "STT_HEALTH_DEADLINE_S",
    "ready_stt_window_s": "STT_READY_STT_WINDOW_S",
    "log_level": "STT_LOG_LEVEL",
    "log_format": "STT_LOG_FORMAT",
    "recovery_grace_s": "STT_RECOVERY_GRACE_S",
    "fetch_max_wait_ms": "STT_FETCH_MAX_WAIT_MS",
    "fetch_min_bytes": "STT_FETCH_MIN_BYTES",
    "fetch_silence_ms": "STT_FETCH_SILENCE_MS",
    "write_stall_ms": "STT_WRITE_STALL_MS",
    "completed_memory": "STT_COMPLETED_MEMORY",
    "max_key_bytes": "STT_MAX_KEY_BYTES",
    "max_header_bytes": "STT_MAX_HEADER_BYTES",
    "producer_linger_ms": "STT_PRODUCER_LINGER_MS",
    "producer_retry_backoff_ms": "STT_PRODUCER_RETRY_BACKOFF_MS",
    "producer_request_timeout_ms": "STT_PRODUCER_REQUEST_TIMEOUT_MS",
    "max_request_size": "STT_MAX_REQUEST_SIZE",
    "stt_open_timeout_s": "STT_OPEN_TIMEOUT_S",
    "stt_ping_interval_s": "STT_PING_INTERVAL_S",
    "stt_max_message_bytes": "STT_MAX_MESSAGE_BYTES",
    "analytics_host": "STT_ANALYTICS_HOST",
    "analytics_port": "STT_ANALYTICS_PORT",
    "analytics_db": "STT_ANALYTICS_DB",
    "analytics_id": "STT_ANALYTICS_ID",
    "analytics_keep_s": "STT_ANALYTICS_KEEP_S",
}
# String values a field accepts that differ from its default (numbers and booleans are derived).
STRINGS = {
    "bootstrap_servers": "kafka-1:9092,kafka-2:9092",
    "stt_base_url": "http://127.0.0.1:8080",
    "group_id": "other-group",
    "group_instance_id": "worker-7",
    "stt_version": "2027-01-01",
    "log_level": "DEBUG",
    "log_format": "json",
    "http_host": "127.0.0.1",
    "api_key": SECRET,
    "analytics_host": "0.0.0.0",
    "analytics_id": "other-analytics",
}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(parser)
    return parser.parse_args(list(argv))


def other_value(name: str, key_file: Path) -> tuple[str, Any]:
    """A valid value for field ``name`` other than its default: (as a string, as the field holds it)."""
    if name == "api_key_file":
        return str(key_file), key_file
    if name in STRINGS:
        return STRINGS[name], STRINGS[name]
    if name == "analytics_db":
        return "lake/a.duckdb", Path("lake/a.duckdb")
    value = Settings.model_fields[name].default
    if isinstance(value, bool):
        return str(not value).lower(), not value
    if isinstance(value, int | float):
        return str(value + 1), value + 1
    assert name.endswith("_topic"), name
    return f"x-{value}", f"x-{value}"


def held(settings: Settings, name: str) -> Any:
    value = getattr(settings, name)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment without any settings variable (for code that reads ``os.environ``)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)


def test_every_field_has_its_documented_variable() -> None:
    assert {name: env_name(name) for name in Settings.model_fields} == DOCUMENTED


# The Kafka security block is only valid as a whole: tests/unit/test_kafka_security.py covers it.
INDEPENDENT = [n for n in Settings.model_fields if n not in KAFKA_SECURITY_FIELDS]


@pytest.mark.parametrize("name", INDEPENDENT)
def test_each_variable_sets_its_field_and_only_it(name: str, key_file: Path) -> None:
    raw, expected = other_value(name, key_file)
    settings = Settings.load(env={env_name(name): raw})
    defaults = Settings.load(env={})
    assert held(settings, name) == expected
    assert held(defaults, name) != expected
    assert {n: held(settings, n) for n in Settings.model_fields if n != name} == {
        n: held(defaults, n) for n in Settings.model_fields if n != name
    }


FLAGGED = [n for n in Settings.model_fields if not is_secret(n) and n not in ("log_level", "log_format")]
FLAGGED_INDEPENDENT = [n for n in FLAGGED if n in INDEPENDENT]


def flag_argv(name: str, raw: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [flag(name)] if value else ["--no-" + flag(name)[2:]]
    return [flag(name), raw]


@pytest.mark.parametrize("name", FLAGGED_INDEPENDENT)
def test_each_flag_sets_its_field(name: str, key_file: Path) -> None:
    raw, expected = other_value(name, key_file)
    assert held(Settings.load(parse(*flag_argv(name, raw, expected)), env={}), name) == expected


@pytest.mark.parametrize("name", [n for n in FLAGGED_INDEPENDENT if Settings.model_fields[n].default is not None])
def test_each_flag_beats_its_variable(name: str, key_file: Path) -> None:
    value = Settings.model_fields[name].default
    argv = flag_argv(name, str(value), value)
    settings = Settings.load(parse(*argv), env={env_name(name): other_value(name, key_file)[0]})
    assert held(settings, name) == value


def test_secrets_and_the_top_level_log_level_have_no_worker_flag() -> None:
    flags = vars(parse())
    assert set(flags) == {*FLAGGED, "ignored_api_key"}
    assert "api_key" not in flags and "log_level" not in flags


def test_precedence_flag_then_variable_then_default() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "STT_FRAME_MS": "50",
        "STT_CREATE_TOPICS": "false",
        "STT_MAX_SESSIONS": "7",
        "CARTESIA_API_KEY": "sk-env",
    }
    config = Settings.load(parse(), env=env)
    assert (config.bootstrap_servers, config.frame_ms, config.create_topics, config.max_sessions) == (
        "kafka:9092",
        50.0,
        False,
        7,
    )
    assert config.max_lead_ms == 300.0 and config.stt_api_key() == "sk-env"
    flagged = Settings.load(parse("--frame-ms", "200", "--create-topics", "--bootstrap-servers", "b:1"), env=env)
    assert (flagged.frame_ms, flagged.create_topics, flagged.bootstrap_servers, flagged.max_sessions) == (
        200.0,
        True,
        "b:1",
        7,
    )
    assert Settings.load(parse(), env={}) == Settings.load(env={})


def test_constructed_by_field_name_kwargs_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_FRAME_MS", "60")
    assert Settings().frame_ms == 60.0
    assert Settings(bootstrap_servers="b:1", frame_ms=80).frame_ms == 80.0
    with pytest.raises(SettingsError, match="no_such_setting: unknown setting"):
        Settings(no_such_setting=1)


def test_frozen_and_replace_validates_again() -> None:
    settings = Settings.load(env={})
    with pytest.raises(ValueError):
        settings.frame_ms = 80  # type: ignore[misc]
    assert settings.replace(frame_ms=80, max_sessions=3).frame_ms == 80.0
    with pytest.raises(SettingsError) as raised:
        settings.replace(frame_ms=20)
    assert str(raised.value) == "STT_FRAME_MS: must be between 50 and 200, got 20"
    with pytest.raises(SettingsError, match=r"^typo: unknown setting$"):
        settings.replace(typo=1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STT_FRAME_MS": "20"}, "STT_FRAME_MS: must be between 50 and 200, got 20"),
        ({"STT_FRAME_MS": "fast"}, "STT_FRAME_MS: must be a number, got fast"),
        ({"STT_MAX_LEAD_MS": "0"}, "STT_MAX_LEAD_MS: must be greater than 0, got 0"),
        ({"STT_SILENCE_BUDGET_MS": "-1"}, "STT_SILENCE_BUDGET_MS: must be at least 0, got -1"),
        ({"STT_COMMIT_INTERVAL_MS": "0"}, "STT_COMMIT_INTERVAL_MS: must be greater than 0, got 0"),
        ({"STT_COMMIT_INTERVAL_MS": "inf"}, "STT_COMMIT_INTERVAL_MS: must be a finite number, got inf"),
        ({"STT_MAX_SESSIONS": "0"}, "STT_MAX_SESSIONS: must be at least 1, got 0"),
        ({"STT_MAX_SESSIONS": "2.5"}, "STT_MAX_SESSIONS: must be a whole number, got 2.5"),
        ({"STT_TOPIC_PARTITIONS": "0"}, "STT_TOPIC_PARTITIONS: must be at least 1, got 0"),
        ({"STT_HTTP_PORT": "65536"}, "STT_HTTP_PORT: must be between 0 and 65535, got 65536"),
        ({"STT_HEALTH_DEADLINE_S": "0"}, "STT_HEALTH_DEADLINE_S: must be greater than 0, got 0"),
        ({"STT_LOG_FORMAT": "xml"}, "STT_LOG_FORMAT: "),
        ({"STT_CREATE_TOPICS": "perhaps"}, "STT_CREATE_TOPICS: must be true or false, got perhaps"),
        ({"STT_AUDIO_TOPIC": "a topic"}, "STT_AUDIO_TOPIC: must be 1-249 characters"),
        ({"STT_TURNS_TOPIC": "stt.audio"}, "STT_TURNS_TOPIC: must differ from STT_AUDIO_TOPIC"),
        ({"STT_BASE_URL": "ftp://stt.example"}, "STT_BASE_URL: must be an http://, https://, ws:// or wss:// URL"),
        ({"STT_BASE_URL": "127.0.0.1:8080"}, "STT_BASE_URL: must be an http://"),
        ({"STT_LOG_LEVEL": "chatty"}, "STT_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        (
            {"STT_PAUSE_LOW_BYTES": "100", "STT_PAUSE_HIGH_BYTES": "100"},
            "STT_PAUSE_LOW_BYTES: must be less than STT_PAUSE_HIGH_BYTES (100), got 100",
        ),
        (
            {"STT_FETCH_SILENCE_MS": "100"},
            "STT_FETCH_SILENCE_MS: must be greater than STT_FETCH_MAX_WAIT_MS (100), got 100",
        ),
        ({"STT_SESSION_TIMEOUT_MS": "500"}, "STT_SESSION_TIMEOUT_MS: must be at least 1000, got 500"),
        ({"STT_RETENTION_MS": "-2"}, "STT_RETENTION_MS: must be at least -1, got -2"),
        ({"STT_COMPLETED_MEMORY": "0"}, "STT_COMPLETED_MEMORY: must be at least 1, got 0"),
        ({"STT_MAX_REQUEST_SIZE": "0"}, "STT_MAX_REQUEST_SIZE: must be at least 1, got 0"),
        ({"STT_OPEN_TIMEOUT_S": "0"}, "STT_OPEN_TIMEOUT_S: must be greater than 0, got 0"),
        ({"KAFKA_BOOTSTRAP_SERVERS": " "}, "KAFKA_BOOTSTRAP_SERVERS: must be host:port[,host:port...], got ' '"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "a:9092,b:x"}, "KAFKA_BOOTSTRAP_SERVERS: must be host:port"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "a:9092,"}, "KAFKA_BOOTSTRAP_SERVERS: must be host:port"),
        ({"STT_ANALYTICS_ID": "stt-pipeline"}, "STT_ANALYTICS_ID: must differ from STT_GROUP_ID"),
        ({"STT_ANALYTICS_PORT": "0"}, "STT_ANALYTICS_PORT: must be between 1 and 65535, got 0"),
        ({"STT_ANALYTICS_KEEP_S": "0"}, "STT_ANALYTICS_KEEP_S: must be greater than 0, got 0"),
    ],
)
def test_an_invalid_value_is_an_error_naming_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load(env={**env, "CARTESIA_API_KEY": SECRET})
    assert str(raised.value).startswith(message)
    assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)
    assert isinstance(raised.value, ValueError)


def test_several_invalid_values_are_all_named() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load(env={"STT_FRAME_MS": "20", "STT_MAX_SESSIONS": "0"})
    assert [name for name, _ in raised.value.problems] == ["STT_FRAME_MS", "STT_MAX_SESSIONS"]


def test_key_file_is_read_without_its_trailing_newline(key_file: Path) -> None:
    settings = Settings.load(env={"CARTESIA_API_KEY_FILE": str(key_file)})
    assert settings.stt_api_key() == SECRET
    assert settings.api_key_file == key_file
    assert SECRET not in repr(settings) and SECRET not in str(settings)


def test_key_from_the_variable_and_none_at_all() -> None:
    assert Settings.load(env={"CARTESIA_API_KEY": SECRET}).stt_api_key() == SECRET
    assert Settings.load(env={}).stt_api_key() == ""


def test_key_file_and_key_both_set_is_an_error_naming_both(key_file: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load(env={"CARTESIA_API_KEY": SECRET, "CARTESIA_API_KEY_FILE": str(key_file)})
    message = str(raised.value)
    assert "CARTESIA_API_KEY," in message and "CARTESIA_API_KEY_FILE" in message and SECRET not in message


@pytest.mark.parametrize("content", [None, b"\xff\xfe", b"\n"])
def test_unreadable_or_empty_key_file_is_an_error_naming_its_variable(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SettingsError) as raised:
        Settings.load(env={"CARTESIA_API_KEY_FILE": str(path)})
    assert str(raised.value).startswith("CARTESIA_API_KEY_FILE: ")


def test_the_key_never_shows_in_repr_str_or_errors() -> None:
    settings = Settings.load(env={"CARTESIA_API_KEY": SECRET})
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert SECRET not in repr(settings.model_dump()) and SECRET not in settings.model_dump_json()
    with pytest.raises(ValueError) as raised:
        settings.replace(frame_ms=1, api_key=SECRET + "2")
    assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)


def test_help_shows_no_secret_and_no_key_flag() -> None:
    env = {**os.environ, "CARTESIA_API_KEY": SECRET, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([STT_PIPELINE, "worker", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "--api-key-file" in done.stdout and "--frame-ms" in done.stdout and "STT_FRAME_MS" in done.stdout
    assert "--api-key " not in done.stdout.replace("\n", " ") and "--api-key]" not in done.stdout


def test_api_key_flag_warns_and_is_ignored(clean_environ: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert Settings.load(parse("--api-key", SECRET), env={}).stt_api_key() == ""
    # An invalid setting stops the worker before it starts, after the warning.
    assert cli.main(["worker", "--api-key", SECRET, "--frame-ms", "20"]) == 2
    err = capsys.readouterr().err
    assert "--api-key is ignored" in err and "CARTESIA_API_KEY_FILE" in err
    assert "stt-pipeline worker: invalid setting STT_FRAME_MS: must be between 50 and 200, got 20" in err
    assert SECRET not in err


def test_worker_reports_an_invalid_variable(clean_environ: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_MAX_SESSIONS", "0")
    monkeypatch.setenv("CARTESIA_API_KEY", SECRET)
    done = subprocess.run(
        [STT_PIPELINE, "worker"],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "stt-pipeline worker: invalid setting STT_MAX_SESSIONS: must be at least 1, got 0"


def test_log_format_flag_then_variable_then_default(clean_environ: None) -> None:
    assert log_format(None, env={}) == "text"
    assert log_format(None, env={"STT_LOG_FORMAT": "JSON"}) == "json"
    assert log_format("text", env={"STT_LOG_FORMAT": "json"}) == "text"
    assert Settings.load(env={"STT_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError, match="STT_LOG_FORMAT: must be text or json"):
        log_format(None, env={"STT_LOG_FORMAT": "xml"})


def test_log_level_flag_then_variable_then_default(clean_environ: None) -> None:
    assert log_level(None, env={}) == "INFO"
    assert log_level(None, env={"STT_LOG_LEVEL": "debug"}) == "DEBUG"
    assert log_level("error", env={"STT_LOG_LEVEL": "debug"}) == "ERROR"
    assert Settings.load(env={"STT_LOG_LEVEL": "warning"}).log_level == "WARNING"
    assert Settings.load(argparse.Namespace(log_level="ERROR"), env={"STT_LOG_LEVEL": "debug"}).log_level == "ERROR"
    with pytest.raises(SettingsError, match=r"^STT_LOG_LEVEL: "):
        log_level(None, env={"STT_LOG_LEVEL": "chatty"})


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("stt-pipeline ") and out.split()[1][0].isdigit()


def test_derived_values() -> None:
    settings = Settings.load(env={}).replace(
        frame_ms=80, max_lead_ms=250, silence_budget_ms=0, session_timeout_ms=6000, revoke_grace_s=3
    )
    session = settings.session_config()
    assert (session.frame_ms, session.max_lead_ms, session.silence_budget_ms) == (80.0, 250.0, 0.0)
    assert (session.drain_deadline_s, session.replay_margin_ms, session.max_reconnects) == (30.0, 1500.0, 8)
    assert settings.heartbeat_interval_ms == 1200 and settings.rebalance_timeout_ms == 33000
    assert settings.replace(session_timeout_ms=1000).heartbeat_interval_ms == 500


def test_socket_defaults_come_from_the_settings() -> None:
    parameters = inspect.signature(open_socket).parameters
    defaults = Settings.load(env={})
    assert parameters["open_timeout_s"].default == defaults.stt_open_timeout_s
    assert parameters["ping_interval_s"].default == defaults.stt_ping_interval_s
    assert parameters["max_message_bytes"].default == defaults.stt_max_message_bytes


def test_emulator_listens_where_the_worker_looks() -> None:
    assert listen_address(Settings.load(env={"STT_BASE_URL": "http://127.0.0.1:9123"})) == ("127.0.0.1", 9123)
    assert listen_address(Settings.load(env={"STT_BASE_URL": "ws://localhost"})) == ("localhost", 80)
    assert listen_address(Settings.load(env={})) == ("127.0.0.1", 8080)


def test_worker_process_environment_round_trips(key_file: Path) -> None:
    from tests.support.config import worker_config
    from tests.support.workers import config_env

    config = worker_config("127.0.0.1:1", "http://127.0.0.1:2", frame_ms=80, create_topics=False)
    assert Settings.load(env=config_env(config)) == config
    assert config_env(config)["CARTESIA_API_KEY"] == "test-key"
    from_file = config.replace(api_key="", api_key_file=key_file)
    assert Settings.load(env=config_env(from_file)).stt_api_key() == SECRET
