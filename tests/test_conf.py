from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from chatstream.conf import build, get_settings


def test_defaults_give_the_offline_demo_and_memory_log() -> None:
    settings = build(None)
    assert settings.connections["default"].is_demo
    assert settings.reply_log.backend == "chatstream.replylog.memory.MemoryReplyLog"
    assert settings.flush_interval == 0.05
    assert settings.disconnect_policy == "continue"


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"FLUSH_INTERVALL": 1}, "Unknown CHATSTREAM setting(s): FLUSH_INTERVALL."),
        ({"FLUSH_INTERVAL": -1}, "CHATSTREAM['FLUSH_INTERVAL'] must be a non-negative number"),
        ({"LOG_TTL": "10"}, "CHATSTREAM['LOG_TTL'] must be a non-negative number"),
        ({"DISCONNECT_POLICY": "drop"}, "CHATSTREAM['DISCONNECT_POLICY'] must be 'continue'"),
        ({"CONNECTIONS": {}}, "CHATSTREAM['CONNECTIONS'] must be a non-empty dict."),
        (
            {"CONNECTIONS": {"other": {"BACKEND": "chatstream.providers.demo.DemoProvider"}}},
            "CHATSTREAM['CONNECTIONS'] needs a 'default' connection.",
        ),
        (
            {"CONNECTIONS": {"default": {"BACKEND": "nowhere.Provider"}}},
            "CHATSTREAM['CONNECTIONS']['default']['BACKEND'] = 'nowhere.Provider' cannot be",
        ),
        (
            {"CONNECTIONS": {"default": {"BACKEND": "chatstream.models.Message"}}},
            "is not a chatstream Provider.",
        ),
        (
            {"CONNECTIONS": {"default": {"BACKEND": "x", "KEY": 1}}},
            "CHATSTREAM['CONNECTIONS']['default'] has unknown keys: KEY.",
        ),
        ({"REPLY_LOG": {"BACKEND": "no.Such"}}, "CHATSTREAM['REPLY_LOG']['BACKEND'] = 'no.Such'"),
    ],
)
def test_bad_settings_are_named(user: dict, message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        build(user)
    assert message in str(info.value)


def test_override_settings_rebuilds_the_object() -> None:
    assert get_settings().flush_interval == 0
    with override_settings(CHATSTREAM={"FLUSH_INTERVAL": 0.5}):
        assert get_settings().flush_interval == 0.5
    assert get_settings().flush_interval == 0


def test_check_names_a_real_connection_without_a_model() -> None:
    connections = {
        "default": {
            "BACKEND": "chatstream.providers.openai.OpenAIProvider",
            "OPTIONS": {"api_key": "sk-x"},
        }
    }
    with (
        override_settings(CHATSTREAM={"CONNECTIONS": connections}),
        pytest.raises(SystemCheckError) as info,
    ):
        call_command("check")
    assert "CHATSTREAM['CONNECTIONS']['default'] has no MODEL." in str(info.value)


def test_check_reports_a_bad_setting_by_name() -> None:
    with override_settings(CHATSTREAM={"NOPE": 1}), pytest.raises(SystemCheckError) as info:
        call_command("check")
    assert "Unknown CHATSTREAM setting(s): NOPE." in str(info.value)
