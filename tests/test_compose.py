"""docker-compose.yml as a deployment must be: the published API and Flower behind auth,
Redis keeping its data, e-mail settings reaching the worker (no engine runs here, so the
file is read as YAML, and by ``docker-compose config`` where that command exists)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support import ROOT

COMPOSE = os.path.join(ROOT, "docker-compose.yml")


def services() -> dict[str, Any]:
    with open(COMPOSE) as file:
        parsed: dict[str, Any] = yaml.safe_load(file)
    return dict(parsed["services"])


def test_the_published_services_require_their_secrets() -> None:
    web, flower = services()["web"], services()["flower"]
    assert web["ports"] == ["8000:8000"] and flower["ports"] == ["5555:5555"]
    # ${VAR:?...}: compose refuses to start without them.
    assert web["environment"]["TASKCAST_API_KEYS"].startswith("${TASKCAST_API_KEYS:?")
    assert web["environment"]["TASKCAST_SECRET"].startswith("${TASKCAST_SECRET:?")
    assert any(arg.startswith("--basic-auth=${FLOWER_BASIC_AUTH:?") for arg in flower["command"])


def test_redis_keeps_its_data_and_the_worker_gets_the_mail_settings() -> None:
    redis_service, worker = services()["redis"], services()["worker"]
    command = redis_service["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert redis_service["volumes"] == ["redis-data:/data"]
    for name in ("MAILTRAP_API_TOKEN", "TASKCAST_MAIL_FROM", "TASKCAST_MAIL_FROM_NAME"):
        assert name in worker["environment"]
    # The token is the worker's: the web service does not need it.
    assert "MAILTRAP_API_TOKEN" not in services()["web"]["environment"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose here")
def test_compose_refuses_to_start_without_the_secrets_and_reads_with_them() -> None:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TASKCAST_API_KEYS", "TASKCAST_SECRET", "FLOWER_BASIC_AUTH")
    }
    missing = subprocess.run(
        ["docker-compose", "-f", COMPOSE, "config"], env=clean, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "set TASKCAST_API_KEYS" in missing.stderr
    secrets = {
        "TASKCAST_API_KEYS": "key-0123456789abcdef",
        "TASKCAST_SECRET": "s" * 32,
        "FLOWER_BASIC_AUTH": "admin:password",
    }
    given = subprocess.run(
        ["docker-compose", "-f", COMPOSE, "config"], env={**clean, **secrets},
        capture_output=True, text=True,
    )  # fmt: skip
    assert given.returncode == 0, given.stderr
    assert "--basic-auth=admin:password" in given.stdout
