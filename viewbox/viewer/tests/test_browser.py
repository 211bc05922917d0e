"""The demo as a patient sees it: gunicorn serving, chromium driven by Playwright."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"
    ),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _browser_database_url(data_dir: Path) -> str:
    """Return a database of its own for the served demo, next to the suite's."""
    suite_url = os.environ.get("VIEWBOX_DATABASE_URL", "")
    if not suite_url.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{data_dir / 'db.sqlite3'}"
    import psycopg

    parts = urlsplit(suite_url)
    name = f"{parts.path.lstrip('/') or 'viewbox'}_browser"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data_dir = tmp_path_factory.mktemp("browser-demo")
    env = {
        **os.environ,
        "VIEWBOX_DATA_DIR": str(data_dir),
        "VIEWBOX_DATABASE_URL": _browser_database_url(data_dir),
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
        yield base, codes
    finally:
        server.terminate()
        server.wait(timeout=10)


def demo_code(codes: str, given_name: str, location: str = "") -> tuple[str, str]:
    """Return the printed I-Code and birth date of a demo patient's visit."""
    for block in codes.split("\n\n"):
        if given_name in block and location in block:
            code = re.search(r"I-Code:\s+(\S+)", block)
            birth = re.search(r"Date of birth:\s+(\S+)", block)
            assert code is not None and birth is not None
            return code.group(1), birth.group(1)
    raise AssertionError(f"no demo code for {given_name} at {location!r}")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
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
    page, base: str, codes: str, given_name: str, state: str, group: str, location: str
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


class TestPatientWithICode:
    def test_patient_reaches_images_and_held_report(self, demo_server, browser) -> None:
        base, codes = demo_server
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        sign_in(
            page,
            base,
            codes,
            "Alice",
            "California",
            "RadNet Los Angeles",
            "West Los Angeles",
        )

        page.get_by_role("link", name=re.compile("CT CHEST WITHOUT CONTRAST")).click()
        assert page.get_by_text("DEMOCT1001").is_visible()
        page.get_by_role("link", name="Report").click()
        assert page.get_by_text(
            "Your report is signed and will be available soon"
        ).is_visible()
        assert page.get_by_text("No acute abnormality").count() == 0

        page.get_by_role("link", name="Images").click()
        tiles = page.locator(".tile__image")
        assert tiles.count() == 2
        tiles.first.click()
        image = page.locator("#frame-image")
        image.wait_for()
        source = image.evaluate("node => node.currentSrc")
        response = context.request.get(source)
        assert response.headers["content-type"] == "image/jpeg"
        picture = Image.open(BytesIO(response.body()))
        assert picture.format == "JPEG"
        assert max(picture.size) == 512
        assert picture.size == (512, 512)
        context.close()

    def test_released_report_and_multiframe_scrolling(
        self, demo_server, browser
    ) -> None:
        base, codes = demo_server
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        sign_in(
            page, base, codes, "Barbara", "Maryland", "Advanced Radiology", "Columbia"
        )

        page.get_by_role("link", name=re.compile("US ABDOMEN COMPLETE")).first.click()
        page.get_by_role("link", name="Report").click()
        assert page.get_by_text(
            "ADDENDUM: Spleen measures 10 cm & is within normal limits."
        ).is_visible()

        page.get_by_role("link", name="Images").click()
        page.locator(".tile__link").first.click()
        slider = page.get_by_label("Frame")
        slider.fill("60")
        # Until the new frame has loaded, the element still shows the old one.
        page.wait_for_function(
            "() => { const i = document.getElementById('frame-image'); "
            "return i.currentSrc.includes('/60/') && i.complete && i.naturalWidth > 0 }"
        )
        source = page.locator("#frame-image").evaluate("node => node.currentSrc")
        picture = Image.open(BytesIO(context.request.get(source).body()))
        assert picture.size == (640, 480)
        assert picture.mode == "RGB"
        context.close()

    def test_wrong_birth_date_is_refused_with_a_message(
        self, demo_server, browser
    ) -> None:
        base, codes = demo_server
        page = browser.new_page()
        code, _ = demo_code(codes, "Carlos")
        page.goto(base + "/g/kern-radiology/bakersfield/icode/")
        page.get_by_label("I-Code").fill(code)
        page.get_by_label("Month").fill("1")
        page.get_by_label("Day").fill("1")
        page.get_by_label("Year").fill("2001")
        page.get_by_role("button", name="See my exams").click()
        alert = page.get_by_role("alert")
        assert "The I-Code or date of birth is not right." in alert.inner_text()
        page.close()
