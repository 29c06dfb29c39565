"""``taskcast.expose``: which tasks clients may start, with what parameters (pure: Celery
apps in memory, nothing published)."""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any, Literal

import pytest
from celery import Celery, Task
from pydantic import BaseModel, Field, ValidationError

import taskcast
from taskcast.served import AppError, serve_app
from taskcast_celery.expose import ExposeError, exposed_tasks
from tests import env


def make_app() -> Celery:
    return Celery(f"expose-{uuid.uuid4().hex[:8]}", set_as_current=False)


def test_the_signature_is_the_parameter_model() -> None:
    app = make_app()

    @taskcast.expose
    @app.task(bind=True, name="proj.images.resize", shared=False)
    def resize(
        self: Task[Any, Any],
        image_id: int,
        width: int = 800,
        mode: Literal["fit", "fill"] = "fit",
        tags: list[str] | None = None,
        note=None,
    ) -> None:
        """Resize an image.

        The rest of the docstring is not the summary.
        """

    [exposure] = exposed_tasks(app).values()
    assert (exposure.name, exposure.task_name) == ("resize", "proj.images.resize")
    assert exposure.summary == "Resize an image."
    schema = exposure.params.model_json_schema()
    assert list(schema["properties"]) == ["image_id", "width", "mode", "tags", "note"]
    assert schema["required"] == ["image_id"]
    assert schema["properties"]["mode"]["enum"] == ["fit", "fill"]
    checked = exposure.params.model_validate_json('{"image_id": 7.0, "tags": ["a"], "note": {}}')
    assert exposure.kwargs(checked) == {
        "image_id": 7,
        "width": 800,
        "mode": "fit",
        "tags": ["a"],
        "note": {},
    }
    for refused, field in (
        ('{"image_id": "7"}', "image_id"),
        ('{"image_id": 7.5}', "image_id"),
        ('{"image_id": 1, "mode": "stretch"}', "mode"),
        ('{"image_id": 1, "height": 5}', "height"),
        ("{}", "image_id"),
    ):
        with pytest.raises(ValidationError, match=field):
            exposure.params.model_validate_json(refused)


def test_a_name_and_a_model_of_its_own() -> None:
    app = make_app()

    class Report(BaseModel):
        pages: int = Field(ge=1, le=50)
        title: str = "Report"

    @taskcast.expose(name="report", params=Report)
    @app.task(name="proj.build_report", shared=False)
    def build_report(pages: int, title: str = "x") -> str:
        return title * pages

    exposure = exposed_tasks(app)["report"]
    assert exposure.params is Report
    with pytest.raises(ValidationError, match="pages"):
        Report.model_validate({"pages": 0})


def test_only_exposed_tasks_are_listed_in_the_order_defined() -> None:
    app = make_app()

    @taskcast.expose
    @app.task(name="b.second", shared=False)
    def second() -> None: ...

    @app.task(name="a.internal", shared=False)
    def internal() -> None: ...

    @taskcast.expose
    @app.task(name="c.first", shared=False)
    def first() -> None: ...

    assert list(exposed_tasks(app)) == ["second", "first"]


def star_args(*values: int) -> None: ...


def star_kwargs(**options: int) -> None: ...


def positional(value: int, /) -> None: ...


def locked(lock: threading.Lock) -> None: ...


@pytest.mark.parametrize(
    ("function", "why"),
    [
        (star_args, "a signature with *values cannot be described"),
        (star_kwargs, "a signature with **options cannot be described"),
        (positional, "parameter 'value' is positional-only"),
        (locked, "its parameters cannot be described"),
    ],
)
def test_a_signature_that_cannot_be_parameters_fails_at_import_naming_the_task(
    function: Any, why: str
) -> None:
    task = make_app().task(name="proj.job", shared=False)(function)
    with pytest.raises(ExposeError, match=re.escape(f"task proj.job: {why}")):
        taskcast.expose(task)


def test_a_model_that_does_not_fit_the_task_fails_at_import() -> None:
    app = make_app()

    class Extra(BaseModel):
        pages: int
        colour: str

    class Missing(BaseModel):
        title: str

    def build(pages: int, title: str = "") -> None: ...

    task = app.task(name="proj.build", shared=False)(build)
    with pytest.raises(ExposeError, match=re.escape("task proj.build: params has 'colour'")):
        taskcast.expose(params=Extra)(task)
    with pytest.raises(ExposeError, match=re.escape("task proj.build: it needs 'pages'")):
        taskcast.expose(params=Missing)(task)


def nothing() -> None: ...


def test_what_is_not_a_task_or_not_a_name_is_refused() -> None:
    with pytest.raises(ExposeError, match="on a Celery task"):
        taskcast.expose(lambda: None)
    task = make_app().task(name="proj.x", shared=False)(nothing)
    with pytest.raises(ExposeError, match="cannot be an API name"):
        taskcast.expose(name="two words")(task)


def test_two_tasks_under_one_name_are_refused_when_the_app_is_served() -> None:
    app = Celery("twice", set_as_current=False, backend=env.REDIS_URL)
    taskcast.install(app)
    taskcast.expose(name="same")(app.task(name="proj.one", shared=False)(nothing))
    taskcast.expose(name="same")(app.task(name="proj.two", shared=False)(nothing))
    with pytest.raises(
        AppError, match=re.escape("proj.one and proj.two are both exposed as 'same'")
    ):
        serve_app(app, "twice")
