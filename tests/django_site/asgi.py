"""The project's ASGI entry point: Django's app and taskcast's in one process, routed by
path (the README's recipe, as written there)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_site.settings")

from django.core.asgi import get_asgi_application

# First: it sets Django up before anything imports a model.
django_app = get_asgi_application()

from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402

import taskcast  # noqa: E402
from taskcast_celery.demo.celery import app as celery_app  # noqa: E402

application = Starlette(
    routes=[
        Mount("/jobs", taskcast.create_app(celery_app)),
        Mount("/", django_app),
    ]
)
