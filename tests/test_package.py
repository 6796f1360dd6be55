"""The wheel stands on its own: built, installed into a fresh virtualenv, added to a
fresh ``startproject``, it serves the chat page, its static files and a streamed reply."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ROOT, free_port
from tests.sse_client import parse_events

HOST_SETTINGS = """
INSTALLED_APPS = ["daphne", *INSTALLED_APPS, "chatstream"]
ASGI_APPLICATION = "host.asgi.application"
CHATSTREAM = {
    "ALLOW_ANONYMOUS": True,
    "CONNECTIONS": {
        "default": {
            "BACKEND": "chatstream.providers.demo.DemoProvider",
            "OPTIONS": {"first_token_delay": 0, "tokens_per_second": 0},
        }
    },
}
"""

HOST_URLS = """
from django.urls import include
urlpatterns += [path("chat/", include("chatstream.urls"))]
"""


# The fresh project's own settings, not the suite's.
ENV = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the fresh project's folder, its virtualenv's python)."""
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "chatstream", source / "chatstream")
    run(sys.executable, "-m", "build", "--wheel", "--outdir", work / "dist", source, cwd=work)
    [wheel] = (work / "dist").glob("chatstream-*.whl")
    run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    python = work / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", wheel, "daphne", cwd=work, timeout=600)
    project = work / "host"
    project.mkdir()
    run(work / "venv" / "bin" / "django-admin", "startproject", "host", project, cwd=work)
    with open(project / "host" / "settings.py", "a") as settings:
        settings.write(HOST_SETTINGS)
    with open(project / "host" / "urls.py", "a") as urls:
        urls.write(HOST_URLS)
    run(python, "manage.py", "migrate", "-v0", cwd=project)
    yield project, python


def test_the_wheel_carries_the_license_and_no_demo_project(
    host: tuple[Path, Path],
) -> None:
    project, python = host
    listing = run(
        python,
        "-c",
        "import importlib.metadata as m; d = m.distribution('chatstream'); "
        "print('\\n'.join(str(f) for f in d.files)); print(d.metadata['License-Expression'])",
        cwd=project,
    )
    assert "chatstream/templates/chatstream/chat.html" in listing
    assert "chatstream/static/chatstream/chat.js" in listing
    assert "chatstream/migrations/0001_initial.py" in listing
    assert "licenses/LICENSE" in listing and "MIT" in listing
    assert "project/" not in listing and "tests/" not in listing


def test_check_warns_a_project_that_would_serve_streams_under_wsgi(
    host: tuple[Path, Path],
) -> None:
    project, python = host
    (project / "host" / "wsgi_only.py").write_text(
        "from host.settings import *  # noqa: F403\n"
        "INSTALLED_APPS = [a for a in INSTALLED_APPS if a != 'daphne']  # noqa: F405\n"
        "del ASGI_APPLICATION\n"
    )
    warned = run(python, "manage.py", "check", "--settings", "host.wsgi_only", cwd=project)
    assert "(chatstream.W001) chatstream streams replies only under an ASGI server" in warned


def test_a_fresh_project_serves_the_page_its_static_files_and_a_reply(
    host: tuple[Path, Path],
) -> None:
    project, python = host
    assert "chatstream" not in run(python, "manage.py", "check", cwd=project).lower()
    port = free_port()
    server = subprocess.Popen(
        [python, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=project,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    page = http.get("/chat/")
                    break
                except httpx2.TransportError:
                    assert time.monotonic() < deadline, "the fresh project never answered"
                    time.sleep(0.2)
            assert page.status_code == 200 and "chatstream" in page.text
            script = http.get("/static/chatstream/chat.js")
            assert script.status_code == 200 and "The chat page" in script.text
            token = {"X-CSRFToken": http.cookies["csrftoken"], "Content-Type": "application/json"}
            made = http.post("/chat/api/conversations/", content="{}", headers=token)
            assert made.status_code == 201, made.text
            sent = http.post(
                f"/chat/api/conversations/{made.json()['id']}/messages/",
                content=json.dumps({"content": "hello from a fresh project"}),
                headers=token,
            )
            assert sent.status_code == 201, sent.text
            assert sent.json()["stream_url"].startswith("/chat/api/messages/")
            with http.stream("GET", sent.json()["stream_url"]) as stream:
                events = list(parse_events(stream.iter_lines()))
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert events[-1].event == "done" and events[-1].data["status"] == "complete"
    assert "offline demo model" in "".join(e.data["text"] for e in events if e.event == "delta")
