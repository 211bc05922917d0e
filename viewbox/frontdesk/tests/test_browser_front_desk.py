"""Front desk in chromium: enrolment with the QR code, then a printed pass,
and the list of waiting images on a phone."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from viewbox.browser_fixtures import REPO, needs_chromium
from viewbox.conftest import package_path
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


def create_demo_staff(env: dict[str, str], username: str) -> tuple[str, str]:
    """Create a front desk user with an enrolled TOTP key.

    Return the password and the key.
    """
    output = subprocess.run(
        [
            sys.executable,
            str(REPO / "manage.py"),
            "create_demo_staff",
            "--username",
            username,
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    password = re.search(r"Password:\s+(\S+)", output)
    key = re.search(r"TOTP key:\s+(\S+)", output)
    assert password is not None and key is not None
    return password.group(1), key.group(1)


def import_waiting_study(
    env: dict[str, str], folder: Path, patient_id: str, name: str
) -> None:
    """Import a real CT whose accession number matches no order."""
    ds = pydicom.dcmread(package_path("data_store", "data/693_J2KR.dcm"))
    ds.PatientName = name
    ds.PatientBirthDate = "19750309"
    ds.PatientID = patient_id
    ds.AccessionNumber = "ACC-NARROW-1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / "waiting.dcm"
    ds.save_as(path, enforce_file_format=True)
    subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "import_dicom", str(path)],
        env=env,
        check=True,
        capture_output=True,
        cwd=REPO,
    )


class TestWaitingImagesOnPhone:
    def test_list_fits_320_pixels(self, demo_site, browser, tmp_path) -> None:
        password, key = create_demo_staff(demo_site.env, "browser.images")
        long_id = "MRN-" + "7" * 60
        long_name = "LONGFAMILYNAMEWITHOUTSPACES" * 2 + "^NARROW"
        import_waiting_study(demo_site.env, tmp_path, long_id, long_name)
        context = browser.new_context(viewport={"width": 320, "height": 640})
        page = context.new_page()
        not_found: list[str] = []
        page.on(
            "response",
            lambda response: (
                not_found.append(response.url) if response.status == 404 else None
            ),
        )

        page.goto(demo_site.base + "/staff/frontdesk/images/")
        page.get_by_label("Username").fill("browser.images")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        code = totp.code_at_step(key, totp.time_step(time.time()))
        page.get_by_label("Code from your authenticator app").fill(code)
        page.get_by_role("button", name="Log in").click()

        assert page.url.endswith("/staff/frontdesk/images/")
        icon = page.locator('link[rel="icon"]').get_attribute("href")
        assert icon is not None
        served = page.request.get(demo_site.base + icon)
        assert served.status == 200
        assert served.headers["content-type"].startswith("image/svg+xml")
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
        study = page.get_by_role("listitem").filter(has_text=long_id)
        assert study.get_by_text("ACC-NARROW-1").is_visible()
        assert study.get_by_text("March 9, 1975").is_visible()
        assert study.get_by_text("CT", exact=True).is_visible()
        assert study.get_by_role(
            "heading", name=re.compile("^NARROW LONG")
        ).is_visible()
        box = study.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= 320

        # Alice's exam is someone else's: the page comes back with the choice
        # and names what differs, and it still fits.
        study.get_by_role("link", name="Attach to an exam").click()
        page.get_by_label("Accession number of the exam").fill("DEMOCT1001")
        page.get_by_role("button", name="Find the exam").click()
        page.get_by_role("button", name="Attach to this exam").click()
        alert = page.get_by_role("alert")
        assert alert.get_by_text("Date of birth: the images say March 9, 1975").count()
        assert page.get_by_text("You chose this exam.").is_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
        assert not_found == []
        context.close()
