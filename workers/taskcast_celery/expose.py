"""``taskcast.expose``: which tasks clients may start, and the parameters each accepts.

A task is private until exposed: clients may follow any task whose id they have (and,
with auth on, its token), but start only the exposed ones, by the name the API gives
them, with parameters checked against a pydantic model before anything is queued::

    @taskcast.expose
    @app.task(bind=True)
    def resize(self, image_id: int, width: int = 800) -> str: ...

    @taskcast.expose(name="report", params=ReportParams)
    @app.task
    def build_report(**options): ...

Without ``params`` the model comes from the task function's signature (type hints and
defaults; a bound task's ``self`` is not a parameter). A signature that cannot be
described as JSON parameters is an ``ExposeError`` when the module is imported, naming
the task. The task receives the checked values as JSON would carry them.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, overload

from celery import Celery, Task
from pydantic import BaseModel, BeforeValidator, ConfigDict, create_model
from pydantic.errors import PydanticUserError

# The attribute of an exposed task object that holds its Exposure.
_ATTRIBUTE = "taskcast_exposure"
# An API name is one URL path segment, readable in a command line.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

T = TypeVar("T")


class ExposeError(Exception):
    """A task cannot be exposed as asked; the message names the task and the reason."""


def whole_number(value: Any) -> Any:
    """A float with no fractional part as an int (441.0 -> 441); anything else as it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer, also when JSON writes it 441.0: JSON Schema's "integer" is any number with
# no fractional part, and that is what the OpenAPI description promises. Still no bools,
# no strings, no 441.5 (the models are strict).
WholeNumber = Annotated[int, BeforeValidator(whole_number)]


class Params(BaseModel):
    """A base for parameter models: unknown fields are an error, not silently dropped,
    and JSON values are taken as they are (no ``"5"`` for 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True, slots=True)
class Exposure:
    """An exposed task as the API names it."""

    # The name clients use: POST /tasks/{name}.
    name: str
    # The Celery task it starts.
    task_name: str
    # What its parameters must be: checked before anything is queued.
    params: type[BaseModel]
    # One line for listings: the first line of the task's docstring.
    summary: str

    def kwargs(self, params: BaseModel) -> dict[str, Any]:
        """Checked parameters as the task's keyword arguments (JSON values)."""
        values: dict[str, Any] = params.model_dump(mode="json")
        return values


@overload
def expose(task: T, /) -> T: ...


@overload
def expose(
    *, name: str | None = None, params: type[BaseModel] | None = None
) -> Callable[[T], T]: ...


def expose(
    task: Any = None, /, *, name: str | None = None, params: type[BaseModel] | None = None
) -> Any:
    """Let clients start this task over REST, the command line and the demo page.

    Place it above ``@app.task(...)``. ``name`` is the API's name for the task (default:
    the last part of its Celery name); ``params`` a pydantic model of its parameters
    (default: one made from the function's signature).
    """

    def decorate(task: T) -> T:
        _expose(task, name, params)
        return task

    return decorate if task is None else decorate(task)


def _expose(task: Any, name: str | None, params: type[BaseModel] | None) -> None:
    if not isinstance(task, Task):
        raise ExposeError(
            f"expose goes above @app.task(...), on a Celery task; got {type(task).__name__}"
        )
    # A task made by @app.task before the app is finalized is a proxy: using it makes it,
    # as a first .delay() would.
    task_name: str = task.name
    api_name = name or task_name.rpartition(".")[2]
    if not _NAME.fullmatch(api_name):
        raise ExposeError(
            f"task {task_name}: {api_name!r} cannot be an API name (letters, digits, "
            "'_', '.' and '-', at most 100, starting with a letter or digit)"
        )
    run = task.run
    model = params if params is not None else model_from_signature(task_name, run, api_name)
    if params is not None:
        _check_model(task_name, run, params)
    try:
        model.model_json_schema()
    except PydanticUserError as exc:
        raise ExposeError(f"task {task_name}: its parameters cannot be described: {exc}") from None
    doc = inspect.getdoc(run) or ""
    summary = doc.strip().split("\n\n", 1)[0].replace("\n", " ")
    setattr(task, _ATTRIBUTE, Exposure(api_name, task_name, model, summary))


def model_from_signature(
    task_name: str, function: Callable[..., Any], api_name: str | None = None
) -> type[BaseModel]:
    """A parameter model with one field per parameter of ``function`` (bound methods:
    without ``self``), typed by its hints (none: any JSON value), with its defaults;
    named after ``api_name`` (``import_rows``: ``ImportRowsParams``), as clients see it."""
    try:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ExposeError(f"task {task_name}: cannot read its signature: {exc}") from None
    fields: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            stars = "*" if parameter.kind is parameter.VAR_POSITIONAL else "**"
            raise ExposeError(
                f"task {task_name}: a signature with {stars}{parameter.name} cannot be "
                "described as parameters; give expose(params=Model)"
            )
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise ExposeError(
                f"task {task_name}: parameter {parameter.name!r} is positional-only; "
                "clients pass parameters by name"
            )
        hint = _whole_numbers(hints.get(parameter.name, Any))
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hint, default)
    words = re.split(r"[^A-Za-z0-9]+", api_name or task_name)
    model_name = "".join(word[:1].upper() + word[1:] for word in words)
    try:
        return create_model(f"{model_name}Params", __base__=Params, **fields)
    except (PydanticUserError, TypeError) as exc:
        raise ExposeError(f"task {task_name}: its parameters cannot be described: {exc}") from None


def _whole_numbers(hint: Any) -> Any:
    """``int`` as ``WholeNumber``, alone or in an optional (``int | None``)."""
    if hint is int:
        return WholeNumber
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        if int in args:
            return Union[tuple(WholeNumber if arg is int else arg for arg in args)]  # noqa: UP007
    return hint


def _check_model(task_name: str, function: Callable[..., Any], model: type[BaseModel]) -> None:
    """Every field of ``model`` must be a keyword ``function`` takes, and every parameter
    it needs a field: a mismatch would fail every run of the task, so it fails now."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ExposeError(f"task {task_name}: params must be a pydantic model class")
    signature = inspect.signature(function)
    parameters = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for field in model.model_fields:
        if not takes_any and field not in parameters:
            raise ExposeError(
                f"task {task_name}: params has {field!r}, which the task does not take"
            )
    for parameter in parameters.values():
        needed = parameter.default is parameter.empty and parameter.kind in (
            parameter.POSITIONAL_OR_KEYWORD,
            parameter.KEYWORD_ONLY,
        )
        if needed and parameter.name not in model.model_fields:
            raise ExposeError(
                f"task {task_name}: it needs {parameter.name!r}, which params does not have"
            )


def exposed_tasks(app: Celery) -> dict[str, Exposure]:
    """The app's exposed tasks by API name, in the order the app defined them (the app
    is finalized, its modules imported)."""
    found: dict[str, Exposure] = {}
    for task in app.tasks.values():
        exposure = getattr(task, _ATTRIBUTE, None)
        if not isinstance(exposure, Exposure):
            continue
        other = found.get(exposure.name)
        if other is not None:
            raise ExposeError(
                f"tasks {other.task_name} and {exposure.task_name} are both exposed as "
                f"{exposure.name!r}: give one expose(name=...)"
            )
        found[exposure.name] = exposure
    return found
