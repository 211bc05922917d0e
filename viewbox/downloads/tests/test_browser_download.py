"""Downloading an exam in chromium against the served demo and its worker."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from viewbox.browser_fixtures import REPO, needs_chromium, sign_in

pytestmark = [pytest.mark.browser, needs_chromium]


class TestDownloadInBrowser:
    def test_patient_downloads_a_zip_through_the_dialog(
        self, demo_site, browser, tmp_path: Path
    ) -> None:
        context = browser.new_context(
            viewport={"width": 390, "height": 844}, accept_downloads=True
        )
        page = context.new_page()
        sign_in(
            page,
            demo_site.base,
            demo_site.codes,
            "Barbara",
            "Maryland",
            "Advanced Radiology",
            "Towson",
        )
        page.get_by_role("link", name="Images").click()
        page.get_by_role("link", name="Download", exact=True).click()

        dialog = page.get_by_role("dialog")
        download_button = dialog.get_by_role("button", name="Download")
        assert download_button.is_disabled()
        dialog.get_by_label(".zip").check()
        dialog.get_by_label(re.compile("I understand that I am downloading")).check()
        assert download_button.is_enabled()
        download_button.click()

        # The served demo's worker is not running in this test, so one
        # worker process takes the queued task here.
        subprocess.run(
            [sys.executable, str(REPO / "manage.py"), "db_worker", "--batch"],
            env=demo_site.env,
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        link = page.get_by_role("link", name="here")
        link.wait_for(timeout=30_000)
        with page.expect_download() as download_info:
            link.click()
        saved = tmp_path / "exam.zip"
        download_info.value.save_as(saved)
        # The page confirms once the file response's cookie has arrived.
        page.get_by_text("Images were successfully downloaded.").wait_for(
            timeout=10_000
        )
        with zipfile.ZipFile(saved) as archive:
            names = archive.namelist()
        assert "DICOMDIR" in names
        assert "REPORT.PDF" in names
        assert re.fullmatch(
            r"exam-[0-9a-f]{8}\.zip", download_info.value.suggested_filename
        )
        context.close()
