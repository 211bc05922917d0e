"""Front desk in chromium: enrolment with the QR code, then a printed pass."""

import re
import subprocess
import sys
import time

import pytest

from viewbox.browser_fixtures import REPO, needs_chromium
from viewbox.frontdesk import totp
from viewbox.frontdesk.tests.pdf_content import page_text

pytestmark = [pytest.mark.browser, needs_chromium]

PASSWORD = "a long front desk passphrase"


def create_staff_user(env: dict[str, str], username: str) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "createsuperuser", "--noinput"],
        env={
            **env,
            "DJANGO_SUPERUSER_USERNAME": username,
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": f"{username}@example.com",
        },
        check=True,
        capture_output=True,
        cwd=REPO,
    )


class TestFrontDeskInBrowser:
    def test_enrol_then_print_a_pass(self, demo_site, browser) -> None:
        create_staff_user(demo_site.env, "browser.desk")
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        blocked: list[str] = []
        page.on(
            "console",
            lambda message: (
                blocked.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )

        page.goto(demo_site.base + "/staff/frontdesk/")
        page.get_by_label("Username").fill("browser.desk")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()

        assert page.url.endswith("/staff/login/enrol/")
        qr_code = page.get_by_role("img", name="QR code with the key shown above")
        assert qr_code.evaluate("node => node.naturalWidth") > 0
        secret = page.locator(".totp-secret").inner_text().replace(" ", "")
        code = totp.code_at_step(secret, totp.time_step(time.time()))
        page.get_by_label("Code from your authenticator app").fill(code)
        page.get_by_role("button", name="Confirm and log in").click()

        assert page.url.endswith("/staff/frontdesk/")
        page.get_by_label("Patient name").fill("Alice")
        page.get_by_role("button", name="Find visits").click()
        page.get_by_role("link", name=re.compile("Alice", re.IGNORECASE)).first.click()
        page.get_by_label(re.compile("DEMOCT1001")).check()
        with page.expect_download() as download_info:
            page.get_by_role("button", name="Print Portal Pass (PDF)").click()
        download = download_info.value
        assert download.suggested_filename == "portal-pass.pdf"
        with open(download.path(), "rb") as pdf:
            text = page_text(pdf.read())
        assert "ALICE TESTPATIENT" in text
        assert demo_site.base + "/g/radnet-los-angeles/" in text
        assert blocked == []
        context.close()
