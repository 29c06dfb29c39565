"""The project's Celery app: configured as the project likes, then made taskcast-ready.

Its workers run with Celery's own command, ``celery -A myproj worker``; the service
serves it with ``taskcast serve --app myproj``.
"""

import os

import taskcast
from celery import Celery

REDIS_URL = os.environ.get("MYPROJ_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("myproj", broker=REDIS_URL, backend=REDIS_URL, include=["myproj.tasks"])
app.conf.update(
    task_default_queue="myproj",
    result_expires=3600,
    # Several projects may share one Redis: every key of this one starts with this.
    broker_transport_options={"global_keyprefix": os.environ.get("MYPROJ_KEY_PREFIX", "")},
    result_backend_transport_options={"global_keyprefix": os.environ.get("MYPROJ_KEY_PREFIX", "")},
)

# SENT records before publish, heartbeats, first-final-wins writes, Flower's events.
taskcast.install(app)
