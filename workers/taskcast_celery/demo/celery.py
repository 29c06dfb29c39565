"""taskcast's demo app: a Celery app like any other, configured from the environment.

``taskcast serve`` and ``taskcast worker`` serve it when no ``--app`` is given; run a
worker of it with ``celery -A taskcast_celery.demo worker``. Like any app of yours, it is
configured first and then made taskcast-ready with ``install``.
"""

from __future__ import annotations

from celery import Celery

from taskcast_celery.demo.mail import MailSettings
from taskcast_celery.demo.settings import DemoSettings
from taskcast_celery.demo.tasks import add_tasks
from taskcast_celery.install import install


def create_demo_app(
    settings: DemoSettings | None = None, mail: MailSettings | None = None
) -> Celery:
    """Build the demo app: its settings (default: the environment's), its tasks."""
    settings = settings or DemoSettings()
    # Not Celery's current app: a process that loads it beside an app of its own keeps
    # its @shared_task tasks bound to that one.
    app = Celery("taskcast-demo", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=settings.result_expires,
        task_default_queue=settings.queue,
        # A task whose worker dies is redelivered instead of lost (stalled, then run
        # again), once TASKCAST_VISIBILITY_TIMEOUT has passed.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        enable_utc=True,
    )
    backend_options: dict[str, object] = {}
    for options in (app.conf.broker_transport_options, backend_options):
        if settings.key_prefix:
            options["global_keyprefix"] = settings.key_prefix
        if settings.redis_sentinel_master:
            # Read by kombu and Celery only where a URL names Sentinels.
            options["master_name"] = settings.redis_sentinel_master
        if settings.redis_sentinel_password is not None:
            password = settings.redis_sentinel_password.get_secret_value()
            options["sentinel_kwargs"] = {"password": password}
    app.conf.result_backend_transport_options = backend_options
    install(app)
    add_tasks(app, mail or MailSettings())
    return app


app = create_demo_app()
