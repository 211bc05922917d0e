"""Markup and path tricks in DICOM and HL7 values, imported by the real importers.

Every value below comes from a modality or a RIS, so none of it is trusted:
it must reach pages, PDFs, the offline viewer and emails as text, and never
take part in a file name.
"""

import io
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pydicom
import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from viewbox.conftest import (
    log_in_verified_staff,
    package_path,
    sign_in_with_icode,
)
from viewbox.downloads.models import Package
from viewbox.ingest.hl7_import import import_message
from viewbox.ingest.models import QuarantinedFile
from viewbox.records.models import Exam, Instance

CT = package_path("data_store", "data/693_J2KR.dcm")
# Writing the hostile values makes pydicom warn; reading them is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")
SCRIPT_NAME = "<script>alert('name')</script>"
IMG_GIVEN = "Eve<img src=x onerror=alert(1)>"
SCRIPT_DESCRIPTION = "<script>alert('exam')</script> CT CHEST"
SCRIPT_DOCTOR = "<b>MARKUP</b>"
SCRIPT_REPORT = "<script>alert('report')</script> IMPRESSION: normal."
FORMULA_REPORT = '=HYPERLINK("http://attacker.invalid","click")'
SCRIPT_SERIES = "<script>alert('series')</script>"
# Every hostile fragment, in the form that would act if left unescaped.
ACTIVE_MARKUP = ("<script>alert", "<img src=x", "<b>MARKUP")
TRAVERSAL = "../../../../tmp/viewbox-escape"


def hostile_messages() -> list[str]:
    """Return an order and its signed report for Maryland, with markup in values."""
    header = "MSH|^~\\&|RIS|AR|VIEWBOX|VIEWBOX|20261120090000+0000||{type}|{id}|P|2.5.1"
    pid = f"PID|1||EVIL-1^^^AR^MR||{SCRIPT_NAME}^{IMG_GIVEN}||19720203|F"
    doctor = f"123^{SCRIPT_DOCTOR}^EVE^^^Dr."
    order = "\r".join(
        [
            header.format(type="ORM^O01", id="HOSTILE-1"),
            pid,
            f"PV1|1|O|AR-TOWSON||||{doctor}",
            "ORC|NW|ACC-EVIL|ACC-EVIL||CM||||20261120090000+0000",
            f"OBR|1|ACC-EVIL|ACC-EVIL|71250^{SCRIPT_DESCRIPTION}|||"
            f"20261120090000+0000|20261120090000+0000||||||||{doctor}"
            "||||||||CT|||||||R05.9^<i>cough</i>",
        ]
    )
    report = "\r".join(
        [
            header.format(type="ORU^R01", id="HOSTILE-2"),
            pid,
            f"OBR|1|ACC-EVIL|ACC-EVIL|71250^{SCRIPT_DESCRIPTION}|||"
            "20261120090000+0000|||||||||||||||20261120100000+0000|||F|||||||"
            "1112223334&<b>READER</b>&IMA&&&Dr.^20261120100000+0000",
            f"OBX|1|TX|71250^CT||{SCRIPT_REPORT}||||||F",
            f"OBX|2|TX|71250^CT||{FORMULA_REPORT}||||||F",
        ]
    )
    return [order, report]


def hostile_dicom(target: Path, **values: str) -> Path:
    ds = pydicom.dcmread(CT)
    ds.PatientID = "EVIL-1"
    ds.AccessionNumber = "ACC-EVIL"
    ds.PatientName = f"{SCRIPT_NAME}^{TRAVERSAL}"
    ds.SeriesDescription = f"{SCRIPT_SERIES}{TRAVERSAL}"
    ds.StudyDescription = TRAVERSAL
    ds.InstitutionName = TRAVERSAL
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = (
        pydicom.uid.generate_uid()
    )
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def assert_no_active_markup(text: str, where: str) -> None:
    for fragment in ACTIVE_MARKUP:
        assert fragment not in text, (where, fragment)


@pytest.fixture
def hostile_exam(maryland, tmp_path) -> Exam:
    for message in hostile_messages():
        result = import_message(message)
        assert result.status == "processed", result.error
    call_command(
        "import_dicom", str(hostile_dicom(tmp_path / "in" / "hostile.dcm")), verbosity=0
    )
    exam = Exam.objects.get(accession_number="ACC-EVIL")
    assert exam.visit.patient.family_name == SCRIPT_NAME
    assert exam.studies.get().series.get().description.startswith(SCRIPT_SERIES)
    return exam


@pytest.mark.django_db
class TestMarkupInPages:
    def test_exam_pages_show_markup_as_text(self, hostile_exam) -> None:
        client = Client()
        sign_in_with_icode(client, hostile_exam)
        instance = Instance.objects.get()
        exam_id = hostile_exam.public_id
        urls = [
            reverse("viewer:exam_list"),
            reverse("viewer:exam_summary", args=[exam_id]),
            reverse("viewer:exam_report", args=[exam_id]),
            reverse("viewer:exam_report_print", args=[exam_id]),
            reverse("viewer:exam_images", args=[exam_id]),
            reverse("viewer:image_view", args=[exam_id, instance.public_id]),
        ]
        shown = ""
        for url in urls:
            # The list of a single exam redirects to that exam.
            response = client.get(url, follow=True)
            assert response.status_code == 200, url
            page = response.content.decode()
            assert_no_active_markup(page, url)
            shown += page
        assert "&lt;script&gt;alert(&#x27;exam&#x27;)&lt;/script&gt;" in shown
        assert "&lt;script&gt;alert(&#x27;report&#x27;)&lt;/script&gt;" in shown
        assert "&lt;script&gt;alert(&#x27;series&#x27;)&lt;/script&gt;" in shown
        assert "&lt;b&gt;MARKUP&lt;/b&gt;" in shown

    def test_staff_lists_show_markup_as_text(self, hostile_exam, tmp_path) -> None:
        with pytest.raises(CommandError):
            call_command(
                "import_dicom",
                str(
                    hostile_dicom(
                        tmp_path / "bad" / f"{SCRIPT_NAME}.dcm", SOPClassUID="bad"
                    )
                ),
                verbosity=0,
            )
        assert QuarantinedFile.objects.exists()
        staff = get_user_model().objects.create_superuser(
            "staff", "staff@example.com", "a long staff passphrase"
        )
        client = Client()
        log_in_verified_staff(client, staff)
        urls = [
            reverse(
                f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"
            )
            for model in admin.site._registry
        ]
        assert reverse("admin:ingest_quarantinedfile_changelist") in urls
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, url
            assert_no_active_markup(response.content.decode(), url)


@pytest.fixture
def run_tasks_at_once(settings) -> None:
    settings.TASKS = {
        "default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}
    }


@pytest.fixture
def hostile_package(hostile_exam, run_tasks_at_once) -> zipfile.ZipFile:
    """Return the ZIP package of the hostile exam, asked for with a ready email."""
    client = Client()
    sign_in_with_icode(client, hostile_exam)
    response = client.post(
        reverse("downloads:request", args=[hostile_exam.public_id]),
        {"format": "zip", "acknowledge_phi": "on", "email": "eve@example.com"},
    )
    assert response.status_code == 302
    package = Package.objects.get()
    assert package.status == Package.Status.READY, package.failure
    with default_storage.open(package.file) as stream:
        return zipfile.ZipFile(io.BytesIO(stream.read()))


@pytest.mark.django_db(transaction=True)
class TestMarkupInDownloads:
    def test_offline_viewer_shows_markup_as_text(self, hostile_package) -> None:
        index = hostile_package.read("INDEX.HTM").decode()
        assert_no_active_markup(index, "INDEX.HTM")
        assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in index
        for name in hostile_package.namelist():
            if name.endswith((".HTM", ".TXT", ".JS", ".CSS")):
                text = hostile_package.read(name).decode()
                assert_no_active_markup(text, name)

    @pytest.mark.skipif(
        shutil.which("pdftotext") is None, reason="poppler-utils is not installed"
    )
    def test_report_pdf_draws_markup_as_text(self, hostile_package) -> None:
        # reportlab reads its own markup in paragraphs; escaped text is drawn
        # as the literal characters, and lost or garbled when it is not.
        pdf_text = pdf_to_text(hostile_package.read("REPORT.PDF"))
        assert "<script>alert('report')</script> IMPRESSION: normal." in pdf_text
        assert "<script>alert('exam')</script> CT CHEST" in pdf_text
        assert FORMULA_REPORT in pdf_text

    def test_ready_email_has_no_exam_text(self, hostile_package) -> None:
        assert len(mail.outbox) == 1
        email = mail.outbox[0]
        assert_no_active_markup(email.subject + email.body, "ready email")
        assert "script" not in email.subject + email.body
        assert "Eve" not in email.subject + email.body


def pdf_to_text(pdf: bytes) -> str:
    result = subprocess.run(
        ["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, check=True
    )
    return re.sub(r"[ \t]+", " ", result.stdout.decode())


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("run_tasks_at_once")
class TestPathsFromTagValues:
    def test_tag_values_never_reach_file_names(
        self, hostile_exam, isolated_files, tmp_path
    ) -> None:
        # A UID with a path in it is rejected; the file is kept under a name
        # of our own.
        with pytest.raises(CommandError):
            call_command(
                "import_dicom",
                str(
                    hostile_dicom(
                        tmp_path / "in2" / "traversal.dcm",
                        SOPInstanceUID=TRAVERSAL,
                        PatientID=TRAVERSAL,
                        AccessionNumber="../x",
                    )
                ),
                verbosity=0,
            )
        client = Client()
        sign_in_with_icode(client, hostile_exam)
        for fmt in ("zip", "iso"):
            client.post(
                reverse("downloads:request", args=[hostile_exam.public_id]),
                {"format": fmt, "acknowledge_phi": "on"},
            )
        packages = list(Package.objects.all())
        assert [p.status for p in packages] == [Package.Status.READY] * 2

        written = [
            path.relative_to(isolated_files)
            for folder in ("media", "quarantine")
            for path in (isolated_files / folder).rglob("*")
            if path.is_file()
        ]
        assert written
        allowed = re.compile(
            r"^(media/dicom/[0-9a-f]{2}/[0-9a-f]{32}\.dcm"
            r"|media/(renders|previews)/\d+/[0-9-]+\.jpg"
            r"|media/packages/[0-9a-f]{32}\.(zip|iso)"
            r"|quarantine/dicom/[0-9a-f]{32}\.dcm)$"
        )
        for path in written:
            assert allowed.match(str(path)), path
        assert not (Path(tempfile.gettempdir()) / "viewbox-escape").exists()

        with default_storage.open(packages[0].file) as stream:
            names = zipfile.ZipFile(io.BytesIO(stream.read())).namelist()
        for name in names:
            assert re.fullmatch(r"[A-Z0-9_/]+(\.[A-Z]{2,3})?", name), name
