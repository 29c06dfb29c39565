"""The Celery side of taskcast: what makes a Celery app taskcast-ready (``install``),
which tasks clients may start (``expose``), the progress helper tasks use, and the
result backend they write through; the demo app under ``demo``.

It never imports the service. Projects use it through ``import taskcast``.
"""
