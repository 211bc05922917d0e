"""Sharing an exam in chromium: the patient makes a link, a recipient uses it."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from viewbox.browser_fixtures import REPO, needs_chromium, sign_in

pytestmark = [pytest.mark.browser, needs_chromium]

PASSWORD = "quiet harbor lantern 42"


class TestSharingInBrowser:
    def test_recipient_views_downloads_and_is_refused_after_revocation(
        self, demo_site, browser, tmp_path: Path
    ) -> None:
        patient_context = browser.new_context(viewport={"width": 390, "height": 844})
        patient = patient_context.new_page()
        sign_in(
            patient,
            demo_site.base,
            demo_site.codes,
            "Barbara",
            "Maryland",
            "Advanced Radiology",
            "Towson",
        )
        exam_title = patient.get_by_role("heading", level=1).inner_text()
        patient.get_by_role("link", name="Share", exact=True).click()
        patient.get_by_role("heading", name="Create Exam Share Link").wait_for()
        # The exam the patient was looking at is ticked already.
        assert patient.get_by_label(re.compile(re.escape(exam_title))).is_checked()
        patient.get_by_label("Nickname").fill("For Dr. Lee")
        patient.get_by_label("Password", exact=True).fill(PASSWORD)
        patient.get_by_label("Password again").fill(PASSWORD)
        patient.get_by_label("Expiration date").fill("2027-12-31")
        patient.get_by_label("Also download images").check()
        patient.get_by_label(re.compile("I understand that I am downloading")).check()
        patient.get_by_role("button", name="Generate Link").click()

        patient.get_by_role("heading", name="Your link is ready").wait_for()
        url = patient.get_by_label(re.compile("Link")).input_value()
        assert re.fullmatch(re.escape(demo_site.base) + r"/s/[A-Za-z0-9_-]{32}/", url)
        assert PASSWORD not in url
        patient.get_by_text("The password is not part of the link.").wait_for()
        patient.get_by_role("button", name="Copy link").click()
        patient.locator("#copy-status").filter(has_text=re.compile(".+")).wait_for()

        recipient_context = browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        recipient = recipient_context.new_page()
        recipient.goto(url)
        # The token is gone from the address bar before anything shows.
        assert "/s/" not in recipient.url
        recipient.get_by_label("Password").fill("not the password")
        recipient.get_by_role("button", name="View exams").click()
        recipient.get_by_text("The password is not right.").wait_for()
        recipient.get_by_label("Password").fill(PASSWORD)
        recipient.get_by_role("button", name="View exams").click()
        recipient.get_by_text("Barbara Sample shared these exams with you.").wait_for()
        recipient.get_by_role("heading", name=exam_title).wait_for()

        recipient.get_by_role("link", name="Images").click()
        recipient.get_by_role("link", name="Download", exact=True).click()
        dialog = recipient.get_by_role("dialog")
        dialog.get_by_label(".zip").check()
        dialog.get_by_label(re.compile("I understand that I am downloading")).check()
        dialog.get_by_role("button", name="Download").click()
        subprocess.run(
            [sys.executable, str(REPO / "manage.py"), "db_worker", "--batch"],
            env=demo_site.env,
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        link = recipient.get_by_role("link", name="here")
        link.wait_for(timeout=30_000)
        with recipient.expect_download() as download_info:
            link.click()
        saved = tmp_path / "shared.zip"
        download_info.value.save_as(saved)
        with zipfile.ZipFile(saved) as archive:
            assert "DICOMDIR" in archive.namelist()

        # The patient reads the tries and turns the link off.
        patient.goto(demo_site.base + "/shares/")
        patient.get_by_role("link", name="For Dr. Lee").click()
        patient.get_by_text("Wrong password").wait_for()
        patient.get_by_text("Right password").wait_for()
        patient.get_by_role("link", name="Turn off this link").click()
        patient.get_by_role("button", name="Turn off link").click()
        patient.get_by_text("The link is turned off.").wait_for()

        recipient.reload()
        recipient.get_by_role("heading", name="This link no longer works").wait_for()
        assert "Barbara" not in recipient.content()
        recipient.goto(url)
        recipient.get_by_role("heading", name="This link no longer works").wait_for()
        recipient_context.close()
        patient_context.close()

    def test_view_only_recipient_sees_images_without_a_download_button(
        self, demo_site, browser
    ) -> None:
        patient_context = browser.new_context()
        patient = patient_context.new_page()
        sign_in(
            patient,
            demo_site.base,
            demo_site.codes,
            "Alice",
            "California",
            "RadNet Los Angeles",
            "West Los Angeles",
        )
        patient.get_by_role("link", name=re.compile("CT HEAD WITHOUT CONTRAST")).click()
        patient.get_by_role("link", name="Share", exact=True).click()
        patient.get_by_label("Nickname").fill("For my sister")
        patient.get_by_label("Password", exact=True).fill(PASSWORD)
        patient.get_by_label("Password again").fill(PASSWORD)
        patient.get_by_label("Expiration date").fill("2027-06-30")
        patient.get_by_label(re.compile("I understand that I am downloading")).check()
        patient.get_by_role("button", name="Generate Link").click()
        url = patient.get_by_label(re.compile("Link")).input_value()

        recipient_context = browser.new_context()
        recipient = recipient_context.new_page()
        recipient.goto(url)
        recipient.get_by_label("Password").fill(PASSWORD)
        recipient.get_by_role("button", name="View exams").click()
        recipient.get_by_text("downloading is not allowed").wait_for()
        recipient.get_by_role("link", name="Images").first.click()
        tile = recipient.locator(".tile__image").first
        tile.wait_for()
        assert recipient.get_by_role("link", name="Download", exact=True).count() == 0
        recipient_context.close()
        patient_context.close()
