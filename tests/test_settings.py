"""Settings: one place, typed, typos caught."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.settings import load_settings


def test_defaults_are_the_embedded_demo():
    settings = load_settings({})
    assert settings.redis_url is None
    assert settings.source == "examples/crm"
    assert str(settings.effective_outbox_dir) == "var/outbox"
    assert settings.sender_domain == "example.com"


def test_misspelt_variable_is_an_error_with_a_suggestion():
    with pytest.raises(
        ConfigError, match="CRM_SMTP_HOTS: unknown setting; did you mean CRM_SMTP_HOST"
    ):
        load_settings({"CRM_SMTP_HOTS": "mail"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CRM_TIMEZONE", "Mars/Base", "unknown time zone"),
        ("CRM_SMTP_SECURITY", "ssl", "CRM_SMTP_SECURITY"),
        ("CRM_MAIL_FROM", "nobody", "not an email address"),
        ("CRM_SMTP_PORT", "99999", "CRM_SMTP_PORT"),
    ],
)
def test_invalid_values_name_the_variable(name, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({name: value})


def test_password_never_printed():
    settings = load_settings({"CRM_SMTP_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(settings)
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "hunter2"
