"""The Kafka security block of the settings and :func:`kafka_options`: variables, flags, validation naming the
variable, one set of client options for every client, and the SASL password never showing."""

from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.kafka.clients import FileTokenProvider, connection, kafka_options
from pipeline.settings import Settings, SettingsError, add_arguments

PASSWORD = "scram-pw-do-not-show-77a1"
STT_PIPELINE = str(Path(sys.executable).with_name("stt-pipeline"))


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A self-signed certificate (a CA bundle as far as the client is concerned)."""
    return self_signed(tmp_path)[0]


def self_signed(where: Path) -> tuple[Path, Path]:
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-subj", "/CN=test", "-days", "1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def scram(**more: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "stt-worker",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        **more,
    }


def test_defaults_are_plaintext_and_no_sasl() -> None:
    settings = Settings.load(env={})
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.sasl_mechanism is None and settings.ssl_check_hostname
    options = kafka_options(settings, "consumer")
    assert options == {
        "bootstrap_servers": "127.0.0.1:9092",
        "client_id": f"{settings.client_id_prefix}-consumer",
        "security_protocol": "PLAINTEXT",
    }


def test_scram_over_tls_gives_every_client_the_same_security(pem: Path) -> None:
    settings = Settings.load(env=scram(KAFKA_SSL_CAFILE=str(pem), STT_GROUP_INSTANCE_ID="w1"))
    assert settings.kafka_password() == PASSWORD
    options = kafka_options(settings, "txn-3")
    assert options["client_id"] == "stt-pipeline-w1-txn-3"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "stt-worker"
    assert options["sasl_plain_password"] == PASSWORD
    assert isinstance(options["ssl_context"], ssl.SSLContext) and options["ssl_context"].check_hostname


def test_unreadable_ca_fails_at_start_naming_its_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^KAFKA_SSL_CAFILE: cannot read"):
        Settings.load(env=scram(KAFKA_SSL_CAFILE=str(tmp_path / "missing.pem")))


def test_a_file_that_is_not_pem_fails_at_start_naming_its_variable(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("no certificate here\n")
    with pytest.raises(SettingsError, match=r"^KAFKA_SSL_CAFILE: .* holds no PEM certificate"):
        Settings.load(env=scram(KAFKA_SSL_CAFILE=str(junk)))


def test_mtls_client_certificate(tmp_path: Path, pem: Path) -> None:
    client = tmp_path / "client"
    client.mkdir()
    cert, key = self_signed(client)
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(pem)}
    settings = Settings.load(env={**env, "KAFKA_SSL_CERTFILE": str(cert), "KAFKA_SSL_KEYFILE": str(key)})
    assert kafka_options(settings, "consumer")["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(SettingsError, match="KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE: not a matching"):
        Settings.load(env={**env, "KAFKA_SSL_CERTFILE": str(cert), "KAFKA_SSL_KEYFILE": str(cert)})


def test_hostname_check_can_be_turned_off_by_variable_and_flag(pem: Path) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": "false"}
    assert not kafka_options(Settings.load(env=env), "admin")["ssl_context"].check_hostname
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--security-protocol", "SSL", "--no-ssl-check-hostname", "--ssl-cafile", str(pem)])
    settings = Settings.load(args, env={})
    assert settings.ssl_cafile == pem and not settings.ssl_check_hostname


def test_password_from_a_mounted_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    env = scram(KAFKA_SASL_PASSWORD_FILE=str(secret))
    del env["KAFKA_SASL_PASSWORD"]
    settings = Settings.load(env=env)
    assert kafka_options(settings, "admin")["sasl_plain_password"] == PASSWORD
    with pytest.raises(SettingsError, match="both are set"):
        Settings.load(env={**env, "KAFKA_SASL_PASSWORD": "x"})


async def test_oauth_token_is_read_again_when_the_file_changes(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("token-1\n")
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "KAFKA_SASL_OAUTH_TOKEN_FILE": str(token),
    }
    provider = kafka_options(Settings.load(env=env), "consumer")["sasl_oauth_token_provider"]
    assert isinstance(provider, FileTokenProvider)
    assert await provider.token() == "token-1"
    token.write_text("token-2, longer\n")
    assert await provider.token() == "token-2, longer"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM: must be set"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL: "),
        ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_MECHANISM: is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        ({"KAFKA_SASL_PASSWORD": PASSWORD}, "KAFKA_SASL_PASSWORD: is set but"),
        ({"KAFKA_SSL_CAFILE": "/etc/hostname"}, "KAFKA_SSL_CAFILE: is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        ({**scram(), "KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME: must be set"),
        ({**scram(), "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD: KAFKA_SASL_PASSWORD or"),
        ({**scram(), "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM: "),
        ({**scram(), "KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "KAFKA_SASL_OAUTH_TOKEN_FILE: must be set"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/etc/hostname"}, "set both or neither"),
        ({**scram(), "KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "KAFKA_SASL_PASSWORD_FILE: "),
    ],
)
def test_inconsistent_security_is_an_error_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load(env=env)
    assert message in str(raised.value)
    assert PASSWORD not in str(raised.value) and PASSWORD not in repr(raised.value)


def test_the_password_never_shows_in_repr_errors_or_help(pem: Path) -> None:
    settings = Settings.load(env=scram(KAFKA_SSL_CAFILE=str(pem)))
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert PASSWORD not in settings.model_dump_json()
    with pytest.raises(SettingsError) as raised:
        settings.replace(frame_ms=1)
    assert PASSWORD not in str(raised.value)
    env = {**os.environ, **scram(KAFKA_SSL_CAFILE=str(pem)), "PYTHONPATH": os.getcwd()}
    for command in (["worker", "--help"], ["produce", "--help"], ["tail", "--help"]):
        done = subprocess.run([STT_PIPELINE, *command], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
    worker_help = subprocess.run([STT_PIPELINE, "worker", "--help"], env=env, capture_output=True, text=True).stdout
    assert "--sasl-username" in worker_help and "--security-protocol" in worker_help
    assert "--sasl-password " not in worker_help and "--sasl-password]" not in worker_help


def test_a_bare_bootstrap_string_means_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    settings = connection("k:1")
    assert settings.bootstrap_servers == "k:1" and settings.security_protocol == "PLAINTEXT"
