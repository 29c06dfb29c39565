"""An example Celery project that uses taskcast only through ``import taskcast``."""
