"""The demo tasks' parameters: what JSON may say, and what each task refuses (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from taskcast_celery.demo.params import EmailParams, ProgressParams


def test_total_may_be_written_as_an_integral_float() -> None:
    # JSON Schema's "integer", which the OpenAPI description promises.
    assert ProgressParams.model_validate_json('{"total": 441.0}').total == 441
    for refused in ("441.5", "true", '"441"'):
        with pytest.raises(ValidationError, match="total"):
            ProgressParams.model_validate_json(f'{{"total": {refused}}}')


def test_email_data_may_hold_integers_past_64_bits() -> None:
    # orjson cannot encode them: measuring the data once answered a 500.
    body = '{"to": "someone@example.com", "data": {"n": 123456789012345678901234567890}}'
    assert EmailParams.model_validate_json(body).data == {"n": 123456789012345678901234567890}
    big = (
        '{"to": "someone@example.com", "data": {"n": 1'
        + "0" * 40
        + ', "s": "'
        + "x" * 17000
        + '"}}'
    )
    with pytest.raises(ValidationError, match="must be at most 16384 bytes as JSON"):
        EmailParams.model_validate_json(big)
