"""Fixtures for browser tests: the demo served by gunicorn, and chromium.

The demo gets its own database and data folder, its own mail catcher for
the emails it sends, and gunicorn on a free loopback port.
"""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from viewbox.accounts.mail_catcher import MailCatcher

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"
)


@dataclass
class DemoSite:
    base: str
    codes: str
    mail: MailCatcher
    # The environment of the served demo, for commands run against it.
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def separate_database_url(data_dir: Path, suffix: str = "browser") -> str:
    """Return a new, empty database for servers that tests start as processes.

    SQLite gets a file in ``data_dir``; on PostgreSQL a database named after
    the suite's with ``suffix`` is created afresh.
    """
    suite_url = os.environ.get("VIEWBOX_DATABASE_URL", "")
    if not suite_url.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{data_dir / 'db.sqlite3'}"
    import psycopg

    parts = urlsplit(suite_url)
    name = f"{parts.path.lstrip('/') or 'viewbox'}_{suffix}"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def drop_separate_database(url: str) -> None:
    """Drop a PostgreSQL database made by ``separate_database_url``."""
    if not url.startswith(("postgres://", "postgresql://")):
        return
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(
            f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)'
        )


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSite]:
    data_dir = tmp_path_factory.mktemp("browser-demo")
    mail = MailCatcher()
    mail.start()
    database_url = separate_database_url(data_dir)
    env = {
        **os.environ,
        "VIEWBOX_DATA_DIR": str(data_dir),
        "VIEWBOX_DATABASE_URL": database_url,
        "VIEWBOX_EMAIL_PORT": str(mail.port),
    }
    manage = [sys.executable, str(REPO / "manage.py")]
    for command in (
        ["migrate", "-v0"],
        ["collectstatic", "--noinput", "-v0"],
        ["load_demo"],
    ):
        subprocess.run(
            [*manage, *command], env=env, check=True, capture_output=True, cwd=REPO
        )
    codes = (data_dir / "demo-codes.txt").read_text()

    port = _free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    server = subprocess.Popen(
        [
            str(gunicorn),
            "viewbox.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--no-control-socket",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/", timeout=1)  # noqa: S310 (loopback http)
                break
            except OSError:
                time.sleep(0.1)
        yield DemoSite(base=base, codes=codes, mail=mail, env=env)
    finally:
        server.terminate()
        server.wait(timeout=10)
        mail.stop()
        drop_separate_database(database_url)


def demo_code(codes: str, given_name: str, location: str = "") -> tuple[str, str]:
    """Return the printed I-Code and birth date of a demo patient's visit."""
    for block in codes.split("\n\n"):
        if given_name in block and location in block:
            code = re.search(r"I-Code:\s+(\S+)", block)
            birth = re.search(r"Date of birth:\s+(\S+)", block)
            assert code is not None and birth is not None
            return code.group(1), birth.group(1)
    raise AssertionError(f"no demo code for {given_name} at {location!r}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield instance
        instance.close()


def sign_in(
    page: Any,
    base: str,
    codes: str,
    given_name: str,
    state: str,
    group: str,
    location: str,
) -> None:
    code, birth = demo_code(codes, given_name, location)
    month, day, year = birth.split("/")
    page.goto(base + "/")
    page.get_by_role("link", name=state).click()
    page.get_by_role("link", name=group, exact=True).click()
    page.get_by_role("link", name="Patient Portal Login").click()
    page.get_by_role("link", name=re.compile(location)).click()
    page.get_by_role("link", name="Enter I-Code").click()
    page.get_by_label("I-Code").fill(code.lower().replace("-", " "))
    page.get_by_label("Month").fill(month)
    page.get_by_label("Day").fill(day)
    page.get_by_label("Year").fill(year)
    page.get_by_role("button", name="See my exams").click()
