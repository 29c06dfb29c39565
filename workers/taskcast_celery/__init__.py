"""Celery side of taskcast: the app, its tasks and the helpers task authors use."""
