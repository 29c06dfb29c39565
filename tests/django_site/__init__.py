"""A Django project of a team's own, with taskcast beside it in one ASGI process, routed
by path, as the README's recipe shows (tests/test_mount.py serves ``asgi.application``)."""
