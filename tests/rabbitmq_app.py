"""The demo app on RabbitMQ, as tests/test_rabbitmq.py's worker and producer processes
run it (``celery -A tests.rabbitmq_app worker``, ``from tests.rabbitmq_app import app``).

The demo app itself, built from the environment (``TASKCAST_BROKER_URL=amqp://...``,
``TASKCAST_QUEUE``), with one change: Celery's control and event exchanges named for the
test session (``TASKCAST_TEST_CONTROL_EXCHANGE``, ``TASKCAST_TEST_EVENT_EXCHANGE``). On
Redis the session's key prefix keeps every broker key apart; RabbitMQ has no prefix,
and its default ``celery.pidbox`` and ``celeryev`` exchanges are shared by every Celery
app on the virtual host: another session's broadcasts (revokes, pings) would reach these
workers, and theirs others'. Exchanges of the session's own are also ones it may delete
at the end.

Imported by worker and producer processes only, never by the test process itself (it
builds the same app with ``tests.test_rabbitmq.amqp_app``, from the same settings).
"""

from __future__ import annotations

import os

from taskcast_celery.demo.celery import create_demo_app

app = create_demo_app()
# Before the app sends anything: Celery reads them as it first broadcasts or sends events.
app.conf.update(
    control_exchange=os.environ["TASKCAST_TEST_CONTROL_EXCHANGE"],
    event_exchange=os.environ["TASKCAST_TEST_EVENT_EXCHANGE"],
)
