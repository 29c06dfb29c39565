"""Mail settings and the retry backoff: pure pieces, no server needed."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from taskcast_celery.demo.mail import MailNotConfigured, MailSettings, MailtrapSender, backoff_delay

_VARIABLES = (
    "MAILTRAP_API_TOKEN",
    "TASKCAST_MAIL_FROM",
    "TASKCAST_MAIL_FROM_NAME",
    "MAILTRAP_API_HOST",
    "MAILTRAP_SANDBOX",
    "MAILTRAP_INBOX_ID",
    "TASKCAST_MAIL_MAX_RETRIES",
    "TASKCAST_MAIL_RETRY_BACKOFF",
    "TASKCAST_MAIL_RETRY_BACKOFF_MAX",
    "TASKCAST_DEV",
)


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], MailSettings]:
    """Read the settings from an environment holding only ``env`` of their variables."""

    def read(env: dict[str, str]) -> MailSettings:
        for name in _VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return MailSettings()

    return read


def test_settings_default_to_the_dev_friendly_values(
    read: Callable[[dict[str, str]], MailSettings],
) -> None:
    settings = read({})
    assert (settings.token, settings.sender, settings.api_host) == (
        None,
        "taskcast@example.com",
        None,
    )
    assert (settings.max_retries, settings.retry_backoff, settings.dev) == (5, 2.0, False)


def test_settings_read_every_variable(read: Callable[[dict[str, str]], MailSettings]) -> None:
    settings = read(
        {
            "MAILTRAP_API_TOKEN": "tok",
            "TASKCAST_MAIL_FROM": "me@example.org",
            "TASKCAST_MAIL_FROM_NAME": "Me",
            "MAILTRAP_API_HOST": "127.0.0.1:8443",
            "MAILTRAP_SANDBOX": "true",
            "MAILTRAP_INBOX_ID": "42",
            "TASKCAST_MAIL_MAX_RETRIES": "3",
            "TASKCAST_MAIL_RETRY_BACKOFF": "0.5",
            "TASKCAST_MAIL_RETRY_BACKOFF_MAX": "10",
            "TASKCAST_DEV": "1",
        }
    )
    assert settings.model_dump() == dict(
        token="tok",
        sender="me@example.org",
        sender_name="Me",
        api_host="127.0.0.1:8443",
        sandbox=True,
        inbox_id="42",
        max_retries=3,
        retry_backoff=0.5,
        retry_backoff_max=10.0,
        dev=True,
    )


def test_the_token_never_shows_in_the_settings_text() -> None:
    settings = MailSettings(token="s3cret-token")
    assert "s3cret-token" not in repr(settings)
    assert "s3cret-token" not in str(settings)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"MAILTRAP_SANDBOX": "yes"}, "MAILTRAP_SANDBOX needs MAILTRAP_INBOX_ID"),
        ({"MAILTRAP_INBOX_ID": "42"}, "MAILTRAP_INBOX_ID is only used with MAILTRAP_SANDBOX"),
        ({"TASKCAST_MAIL_MAX_RETRIES": "-1"}, "TASKCAST_MAIL_MAX_RETRIES\n.*greater than or"),
        ({"MAILTRAP_SANDBOX": "maybe"}, "MAILTRAP_SANDBOX\n.*valid boolean"),
    ],
)
def test_inconsistent_settings_stop_the_worker_at_start(
    read: Callable[[dict[str, str]], MailSettings], env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        read(env)


def test_mailtrap_needs_a_token(read: Callable[[dict[str, str]], MailSettings]) -> None:
    with pytest.raises(MailNotConfigured, match="MAILTRAP_API_TOKEN is not set"):
        MailtrapSender(read({}))


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    ceilings = [backoff_delay(n, base=2.0, cap=30.0, rand=lambda: 1.0) for n in range(6)]
    assert ceilings == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(3, base=2.0, cap=30.0, rand=lambda: 0.0) == 0.0
    rng = random.Random(7)
    draws = [backoff_delay(2, base=2.0, cap=30.0, rand=rng.random) for _ in range(50)]
    # Spread over [0, 8): retries of tasks that failed together do not line up.
    assert all(0.0 <= draw < 8.0 for draw in draws)
    assert len(set(draws)) == 50
