"""What a wheel installs: the two import packages and nothing else, and a client that
works without the server's packages (a fresh virtual environment, the wheel built here);
and the README's install commands, each run as written in a fresh environment of its own:
from a clone, and from the wheel its build command makes."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="builds with uv")

README = Path(ROOT) / "README.md"
# The README's commands run beside a clone of the repository under this name.
CLONE = "taskcast"
BUILD = f"cd {CLONE} && uv build"


@dataclass(frozen=True)
class Command:
    """One install command of the README, and the directory it runs in (the wheel's run
    in the clone, after the block's ``cd``)."""

    line: str
    in_clone: bool

    @property
    def extras(self) -> set[str]:
        found = re.search(r"\[([\w,]+)\]", self.line)
        return set(found.group(1).split(",")) if found else set()


def install_step() -> str:
    """Step 1 of the README's "Use it with your Celery app": the install commands."""
    text = README.read_text()
    section = text[text.index("## Use it with your Celery app") :]
    return section[section.index("1. **Install**") : section.index("2. **Make the app")]


def shell_lines(step: str) -> list[list[str]]:
    """The lines of each ``sh`` block of ``step``, comments and all, as a reader copies
    them."""
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```$", step, re.MULTILINE | re.DOTALL)
    return [[line.strip() for line in block.splitlines() if line.strip()] for block in blocks]


def readme_commands() -> tuple[list[Command], str]:
    """The install commands (from a clone, then from the wheel) and the build command."""
    from_clone, from_wheel = shell_lines(install_step())
    build = from_wheel[0].split("#")[0].strip()
    assert build == BUILD, from_wheel
    commands = [Command(line, in_clone=False) for line in from_clone]
    commands += [Command(line, in_clone=True) for line in from_wheel[1:]]
    return commands, build


def copy_clone(into: Path) -> Path:
    """A clone of the working tree as it is (tracked files and new ones, ignored ones
    left out, as git would): what a reader's ``git clone`` holds."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    clone = into / CLONE
    for name in filter(None, listed):
        source = Path(ROOT) / name
        if source.is_file():  # not one deleted in the working tree
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    return clone


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the clone, where the README's commands run; the wheel built
    by the README's build command, in the clone's ``dist/``."""
    where = tmp_path_factory.mktemp("workspace")
    copy_clone(where)
    _, build = readme_commands()
    subprocess.run(["bash", "-c", build], cwd=where, check=True, capture_output=True, timeout=300)
    return where


@pytest.fixture(scope="module")
def wheel(workspace: Path) -> Path:
    [built] = (workspace / CLONE / "dist").glob("taskcast-*.whl")
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
    subprocess.run(["uv", "venv", "--quiet", str(venv)], check=True, timeout=120)
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
        "feed = taskcast.sign_feed_token('user:42', secret='s' * 32)\n"
        "print(token.startswith('v1.') and feed.startswith('v1.'))\n"
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


# What each extra brings, by a module only it installs.
EXTRA_MODULES = {"celery": "celery", "server": "starlette", "flower": "flower"}
PROBE = """
import importlib.util, sys, taskcast
assert taskcast.__file__.startswith(sys.prefix), taskcast.__file__
# The public names each install offers, resolved as a user's code would (a name whose
# extra is missing raises, naming it).
public = {
    "celery": ("install", "expose", "ProgressReporter", "owned_by"),
    "starlette": ("create_app",),
}
for module, names in public.items():
    if importlib.util.find_spec(module) is not None:
        for name in names:
            assert callable(getattr(taskcast, name)), name
assert taskcast.sign_feed_token("user:42", secret="s" * 32).startswith("v1.")
print(taskcast.__version__)
for module in sys.argv[1:]:
    print(module, importlib.util.find_spec(module) is not None)
"""


async def run_as_written(command: Command, workspace: Path, venv: Path) -> str:
    """Run ``command`` with ``venv`` active (as ``source venv/bin/activate`` leaves a
    shell), then say what the environment holds; "" when all is as the extras say, else
    what went wrong."""
    made = await asyncio.create_subprocess_exec(
        "uv", "venv", "--quiet", "--seed", str(venv), stderr=asyncio.subprocess.PIPE
    )
    _, err = await made.communicate()
    assert made.returncode == 0, err.decode()
    active = {
        **os.environ,
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    active.pop("PYTHONPATH", None)
    cwd = workspace / CLONE if command.in_clone else workspace
    installing = await asyncio.create_subprocess_exec(
        "bash", "-c", command.line, cwd=cwd, env=active,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await installing.communicate()
    if installing.returncode != 0:
        return f"{command.line}: exit {installing.returncode}\n{output.decode()[-3000:]}"
    wanted = command.extras | ({"celery"} if "server" in command.extras else set())
    modules = [EXTRA_MODULES[extra] for extra in EXTRA_MODULES]
    probing = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "python"), "-c", PROBE, *modules, cwd=venv, env=active,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    shown, _ = await probing.communicate()
    expected = [f"{EXTRA_MODULES[extra]} {extra in wanted}" for extra in EXTRA_MODULES]
    lines = shown.decode().splitlines()
    if probing.returncode != 0 or lines[1:] != expected:
        return f"{command.line}: installed {lines}, expected {expected}"
    return ""


@pytest.mark.timeout(600)
async def test_the_readme_s_install_commands_work_as_written(
    workspace: Path, wheel: Path, tmp_path: Path
) -> None:
    commands, _ = readme_commands()
    # Every extra, from the clone and from the wheel; pip, and uv's pip too.
    for source in (False, True):
        chosen = {frozenset(c.extras) for c in commands if c.in_clone is source}
        assert {frozenset(), frozenset({"celery"}), frozenset({"server"})} <= chosen, commands
        assert any("flower" in e for e in chosen), commands
    assert any(c.line.startswith("uv pip install") for c in commands), commands
    # The wheel they name is the one the build command makes.
    named = {m for c in commands for m in re.findall(r"dist/(\S+?\.whl)", c.line)}
    assert named == {wheel.name}, (named, wheel.name)
    # Not yet on PyPI: the form by name is given as the one for later, and not run.
    assert "Once taskcast is published on PyPI" in install_step()
    # Each in an environment of its own, a few at a time (each is mostly waiting on the
    # index and unpacking).
    slots = asyncio.Semaphore(4)

    async def one(i: int, command: Command) -> str:
        async with slots:
            return await run_as_written(command, workspace, tmp_path / f"venv-{i}")

    failures = await asyncio.gather(*(one(i, c) for i, c in enumerate(commands)))
    assert not [failure for failure in failures if failure], "\n\n".join(failures)
