"""taskcast's demo app: a Celery app like any other, with three tasks (sleep, progress, email)."""
