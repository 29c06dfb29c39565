"""The Django project's own page."""

from django.http import HttpRequest, JsonResponse
from django.urls import path


def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"greeting": "hello from Django", "path": request.path})


urlpatterns = [path("hello/", hello)]
