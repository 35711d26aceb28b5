"""Tests of pipeline.stt.client's request parts: the upgrade headers (version, User-Agent, key)."""

from __future__ import annotations

from importlib import metadata

from pydantic import SecretStr

from pipeline.stt.client import stt_headers


def test_user_agent_names_the_installed_version() -> None:
    headers = stt_headers("", "2026-08-14")
    assert headers["User-Agent"] == f"stt-pipeline/{metadata.version('stt-pipeline')}"
    assert headers["Cartesia-Version"] == "2026-08-14"
    assert "Authorization" not in headers


def test_the_key_goes_only_into_authorization() -> None:
    headers = stt_headers(SecretStr("sk-secret"), "v")
    assert headers["Authorization"] == "Bearer sk-secret"
    assert [name for name, value in headers.items() if "sk-secret" in value] == ["Authorization"]
