"""E-mail through Mailtrap: its settings, the message, and what a failed send means.

A failed send is either transient (the network or the API may recover: retry) or
permanent (retrying cannot help: fail at once). Neither ever carries the API token in
its message, because the message becomes the task's status, its result and a log line.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, quote_plus

import mailtrap as mt
import requests
from pydantic import AliasChoices, Field, NonNegativeFloat, NonNegativeInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SENDER = "taskcast@example.com"
DEFAULT_SENDER_NAME = "taskcast"
REDACTED = "[redacted]"


class MailSettings(BaseSettings):
    """How workers send e-mail (see the README's E-mail section)."""

    model_config = SettingsConfigDict(env_ignore_empty=True, frozen=True, populate_by_name=True)

    # The Mailtrap API token. Left out of repr so that printing or logging the settings
    # never shows it. None: the dev outbox in dev mode, else every e-mail task fails.
    token: str | None = Field(None, validation_alias=AliasChoices("MAILTRAP_API_TOKEN"), repr=False)
    sender: str = Field(DEFAULT_SENDER, validation_alias=AliasChoices("TASKCAST_MAIL_FROM"))
    sender_name: str = Field(
        DEFAULT_SENDER_NAME, validation_alias=AliasChoices("TASKCAST_MAIL_FROM_NAME")
    )
    # host[:port] to send to instead of Mailtrap's; the client always speaks HTTPS.
    api_host: str | None = Field(None, validation_alias=AliasChoices("MAILTRAP_API_HOST"))
    # Mailtrap's sandbox: e-mail lands in the test inbox ``inbox_id``, not with people.
    sandbox: bool = Field(False, validation_alias=AliasChoices("MAILTRAP_SANDBOX"))
    inbox_id: str | None = Field(None, validation_alias=AliasChoices("MAILTRAP_INBOX_ID"))
    # Retries after a transient failure, and the base and cap of their backoff (seconds).
    max_retries: NonNegativeInt = Field(
        5, validation_alias=AliasChoices("TASKCAST_MAIL_MAX_RETRIES")
    )
    retry_backoff: NonNegativeFloat = Field(
        2.0, validation_alias=AliasChoices("TASKCAST_MAIL_RETRY_BACKOFF")
    )
    retry_backoff_max: NonNegativeFloat = Field(
        300.0, validation_alias=AliasChoices("TASKCAST_MAIL_RETRY_BACKOFF_MAX")
    )
    # Without a token, keep e-mail in the dev outbox instead of failing the task.
    dev: bool = Field(False, validation_alias=AliasChoices("TASKCAST_DEV"))

    @model_validator(mode="after")
    def _consistent(self) -> MailSettings:
        # The same rules the client enforces, checked when the worker starts rather
        # than on the first e-mail.
        if self.sandbox and not self.inbox_id:
            raise ValueError("MAILTRAP_SANDBOX needs MAILTRAP_INBOX_ID")
        if self.inbox_id and not self.sandbox:
            raise ValueError("MAILTRAP_INBOX_ID is only used with MAILTRAP_SANDBOX=true")
        return self


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """One e-mail a task sends, from the configured sender."""

    to: str
    subject: str
    text: str
    # The task that sends it, so that the e-mail can be traced back to its task.
    task_id: str


class MailUnavailable(Exception):
    """A transient failure: the API or the way to it may recover, so retry."""


class MailRejected(Exception):
    """A permanent failure: the API refused the token or the e-mail; retrying cannot help."""


class MailNotConfigured(Exception):
    """No token and not in dev mode: there is nowhere to send e-mail."""


class Sender(Protocol):
    """Somewhere e-mail goes; ``send`` returns the message ids it was given."""

    def send(self, mail: OutgoingMail) -> list[str]: ...


def backoff_delay(
    retries: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number ``retries + 1``, with "full jitter".

    A uniform draw below ``min(cap, base * 2**retries)``: tasks that failed together
    (an outage) spread their retries out instead of hitting the API in the same instant.
    """
    return rand() * min(cap, base * 2.0**retries)


class MailtrapSender:
    """Sends through Mailtrap's sending API with the ``mailtrap`` client."""

    def __init__(self, settings: MailSettings) -> None:
        if not settings.token:
            raise MailNotConfigured("MAILTRAP_API_TOKEN is not set")
        self._settings = settings
        # The token as an answer might echo it: as it is, percent-encoded (a URL, a form),
        # in any case (an upper-cased message, %2f for %2F).
        forms = {settings.token, quote(settings.token, safe=""), quote_plus(settings.token)}
        self._token = re.compile("|".join(map(re.escape, forms)), re.IGNORECASE)
        self._client = mt.MailtrapClient(
            token=settings.token,
            api_host=settings.api_host,
            sandbox=settings.sandbox,
            inbox_id=settings.inbox_id,
        )
        default_host = (
            mt.MailtrapClient.SANDBOX_HOST if settings.sandbox else mt.MailtrapClient.DEFAULT_HOST
        )
        self.host: str = settings.api_host or default_host

    def send(self, mail: OutgoingMail) -> list[str]:
        message = mt.Mail(
            sender=mt.Address(email=self._settings.sender, name=self._settings.sender_name),
            to=[mt.Address(email=mail.to)],
            subject=mail.subject,
            text=mail.text,
            custom_variables={"taskcast_task_id": mail.task_id},
        )
        # Each failure is re-raised as our own, with no chained original: the originals
        # carry server-supplied text, and only text that was scrubbed may reach a log.
        try:
            response = self._client.send(message)
        except mt.AuthorizationError as exc:
            raise MailRejected(
                self._scrub(
                    f"Mailtrap refused the API token (HTTP 401: {exc}); check MAILTRAP_API_TOKEN"
                )
            ) from None
        except mt.APIError as exc:
            answer = self._scrub(f"HTTP {exc.status}: {exc}")
            if exc.status == 429 or exc.status >= 500:
                raise MailUnavailable(
                    f"Mailtrap could not take the e-mail now ({answer})"
                ) from None
            raise MailRejected(f"Mailtrap refused the e-mail ({answer})") from None
        except requests.Timeout:
            raise MailUnavailable(f"Mailtrap at {self.host} did not answer in time") from None
        except requests.ConnectionError as exc:
            reason = self._scrub(_root_cause(exc))
            raise MailUnavailable(f"could not reach Mailtrap at {self.host}: {reason}") from None
        return [str(message_id) for message_id in response["message_ids"]]

    def _scrub(self, text: str) -> str:
        return self._token.sub(REDACTED, text)


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a chain of wrapped errors, e.g. ``Connection refused``."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
