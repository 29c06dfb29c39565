"""What a wheel installs: the two import packages and nothing else, and a client that
works without the server's packages (a fresh virtual environment, the wheel built here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="builds with uv")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        ["uv", "build", "--wheel", "--out-dir", str(out)],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [built] = out.glob("taskcast-*.whl")
    return built


def test_the_wheel_holds_taskcast_and_taskcast_celery_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {name for name in top if not name.endswith(".dist-info")} == {
        "taskcast",
        "taskcast_celery",
    }
    # What the service serves from its own package: the demo page, and type hints.
    assert {"taskcast/static/app.js", "taskcast/py.typed", "taskcast_celery/py.typed"} <= set(names)


def test_a_client_only_install_imports_taskcast_without_the_server(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run(
        ["uv", "pip", "install", "--python", python, str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # Run from elsewhere: the checkout's folders must not be what gets imported.
    probe = (
        "import importlib.util as u, taskcast\n"
        "assert u.find_spec('service') is None and u.find_spec('workers') is None\n"
        "assert u.find_spec('celery') is None and u.find_spec('starlette') is None\n"
        "print(taskcast.__version__, taskcast.Client('http://127.0.0.1:1'))\n"
        "task = '0B1E0000-0000-4000-8000-000000000000'\n"
        "token = taskcast.sign_watch_token(task, secret='s' * 32)\n"
        "print(token.startswith('v1.'))\n"
        "try:\n    taskcast.install\nexcept ModuleNotFoundError as exc:\n    print(exc)\n"
    )
    shown = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert shown[0].startswith("0.") and "Client('http://127.0.0.1:1', api_key=None)" in shown[0]
    assert shown[1] == "True"
    assert shown[2].endswith("pip install 'taskcast[celery]'")
    serve = subprocess.run(
        [str(venv / "bin" / "taskcast"), "serve"], cwd=tmp_path, capture_output=True, text=True
    )
    assert serve.returncode == 2
    assert "comes with the server extra: pip install 'taskcast[server]'" in serve.stderr
