"""Requesting, preparing, downloading and expiring packages over HTTP."""

import io
import time
import zipfile
from datetime import UTC, date, datetime, timedelta

import pydicom
import pytest
import time_machine
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse
from pydicom.uid import generate_uid

from viewbox.conftest import (
    add_report,
    make_exam,
    make_patient,
    package_path,
    sign_in_with_icode,
)
from viewbox.downloads import maintenance
from viewbox.downloads.models import Package, PackageNotice
from viewbox.ingest.dicom_import import import_dicom_file
from viewbox.records.models import Exam

PHI = "acknowledge_phi"
CT = package_path("data_store", "data/693_J2KR.dcm")
FINDINGS = "IMPRESSION: Normal study."


@pytest.fixture(autouse=True)
def run_tasks_at_once(settings) -> None:
    settings.TASKS = {
        "default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}
    }


def import_ct(exam: Exam, tmp_path, count: int = 2) -> None:
    study, series = generate_uid(), generate_uid()
    for number in range(1, count + 1):
        ds = pydicom.dcmread(CT)
        ds.PatientID = exam.visit.patient.mrn
        ds.PatientName = "SAMPLE^BARBARA"
        ds.AccessionNumber = exam.accession_number
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        path = tmp_path / f"{exam.accession_number}-{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        import_dicom_file(path)


@pytest.fixture
def signed_in(maryland, tmp_path):
    barbara = make_patient(
        maryland, "DEMO-2001", "Barbara", "Sample", date(1975, 9, 30)
    )
    exam = make_exam(barbara, maryland, "ACC1", description="CT HEAD WITHOUT CONTRAST")
    import_ct(exam, tmp_path)
    other = make_patient(maryland, "DEMO-9001", "Olive", "Other", date(1960, 1, 1))
    others_exam = make_exam(other, maryland, "ACC9")
    import_ct(others_exam, tmp_path)
    client = Client()
    sign_in_with_icode(client, exam)
    return client, exam, others_exam


def request_url(exam: Exam) -> str:
    return reverse("downloads:request", args=[exam.public_id])


def ask(client: Client, exam: Exam, fmt: str = "zip", **extra: str):
    data = {"format": fmt, PHI: "on", **extra}
    return client.post(request_url(exam), data)


@pytest.mark.django_db(transaction=True)
class TestRefusedDownloads:
    def test_request_without_phi_tick_is_refused(self, signed_in) -> None:
        client, exam, _ = signed_in
        response = client.post(request_url(exam), {"format": "zip"})
        assert response.status_code == 400
        assert (
            "Check the box to confirm that you understand." in response.content.decode()
        )
        assert not Package.objects.exists()

    def test_other_patients_exam_is_not_found(self, signed_in) -> None:
        client, _, others_exam = signed_in
        assert client.get(request_url(others_exam)).status_code == 404
        assert ask(client, others_exam).status_code == 404
        assert not Package.objects.exists()

    def test_other_patients_package_not_found(self, signed_in) -> None:
        client, exam, others_exam = signed_in
        package = Package.objects.create(exam=others_exam, format="zip")
        for name in ("downloads:status", "downloads:progress", "downloads:file"):
            for exam_id in (exam.public_id, others_exam.public_id):
                url = reverse(name, args=[exam_id, package.public_id])
                assert client.get(url).status_code == 404, (name, exam_id)

    def test_exam_not_completed_cannot_be_downloaded(self, signed_in) -> None:
        client, exam, _ = signed_in
        Exam.objects.filter(pk=exam.pk).update(status=Exam.Status.IN_PROGRESS)
        assert client.get(request_url(exam)).status_code == 404
        assert ask(client, exam).status_code == 404

    def test_file_after_24_hours_is_gone(self, signed_in) -> None:
        client, exam, _ = signed_in
        ask(client, exam)
        package = Package.objects.get()
        assert package.expires_at == package.ready_at + timedelta(hours=24)
        # The session would end long before a day passes, so the package's
        # clock moves instead of the test's.
        Package.objects.filter(pk=package.pk).update(
            expires_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        url = reverse("downloads:file", args=[exam.public_id, package.public_id])
        assert client.get(url).status_code == 404
        maintenance.run_maintenance()
        package.refresh_from_db()
        assert package.status == Package.Status.EXPIRED
        assert not default_storage.exists(f"packages/{package.public_id.hex}.zip")

    def test_full_disk_fails_with_a_message(self, signed_in, monkeypatch) -> None:
        from viewbox.downloads import tasks
        from viewbox.downloads.packaging import PackageSpaceError

        def full_disk(*args, **kwargs):
            raise PackageSpaceError("No space left on device")

        monkeypatch.setattr(tasks, "build_package", full_disk)
        client, exam, _ = signed_in
        response = ask(client, exam)
        page = client.get(response["Location"]).content.decode()
        assert (
            "We could not prepare your file right now. Please try again later." in page
        )
        assert Package.objects.get().status == Package.Status.FAILED


@pytest.mark.django_db(transaction=True)
class TestDownloads:
    def test_zip_is_prepared_and_downloaded(self, signed_in) -> None:
        client, exam, _ = signed_in
        response = ask(client, exam)
        package = Package.objects.get()
        assert response["Location"] == reverse(
            "downloads:status", args=[exam.public_id, package.public_id]
        )
        assert package.status == Package.Status.READY
        assert package.instance_count == 2
        page = client.get(response["Location"]).content.decode()
        assert "here</a>" in page
        assert "extract the .zip file" in page

        download = client.get(
            reverse("downloads:file", args=[exam.public_id, package.public_id])
        )
        assert download.status_code == 200
        assert download["Content-Disposition"] == (
            f'attachment; filename="exam-{package.public_id.hex[:8]}.zip"'
        )
        names = zipfile.ZipFile(
            io.BytesIO(b"".join(download.streaming_content))
        ).namelist()
        assert "DICOMDIR" in names
        assert "INDEX.HTM" in names
        assert "README.TXT" in names

    def test_two_requests_share_one_package(self, signed_in) -> None:
        client, exam, _ = signed_in
        first = ask(client, exam)
        second = ask(client, exam)
        assert first["Location"] == second["Location"]
        assert Package.objects.count() == 1

    def test_ready_icon_shows_next_to_the_exam(self, signed_in) -> None:
        client, exam, _ = signed_in
        ask(client, exam)
        page = client.get(reverse("viewer:exam_summary", args=[exam.public_id])).content
        assert "Download ready" in page.decode()

    def test_released_report_is_in_the_package(self, signed_in) -> None:
        client, exam, _ = signed_in
        add_report(exam, "F", FINDINGS, datetime(2026, 11, 20, 18, tzinfo=UTC))
        ask(client, exam)
        package = Package.objects.get()
        with default_storage.open(package.file, "rb") as stream:
            names = zipfile.ZipFile(stream).namelist()
        assert "REPORT.PDF" in names

    def test_held_report_is_not_in_the_package(self, signed_in, settings) -> None:
        settings.REPORT_HOLD_HOURS_BY_STATE = {"MD": 96}
        client, exam, _ = signed_in
        add_report(exam, "F", FINDINGS, datetime.now(UTC) - timedelta(hours=1))
        ask(client, exam)
        with default_storage.open(Package.objects.get().file, "rb") as stream:
            names = zipfile.ZipFile(stream).namelist()
        assert "REPORT.PDF" not in names

    def test_ready_email_holds_only_a_link(self, signed_in, mail_catcher) -> None:
        client, exam, _ = signed_in
        ask(client, exam, email="barbara@example.com")
        [message] = mail_catcher.wait_for_count(1)
        text = message.get_body(("plain",)).get_content()
        assert "http://testserver/g/advanced-radiology/towson/" in text
        for private in (
            "Barbara",
            "Sample",
            "CT HEAD",
            "ACC1",
            "1975",
            ".zip",
            "/download/",
        ):
            assert private not in text

    def test_warning_is_emailed_two_hours_before_deletion(
        self, signed_in, mail_catcher
    ) -> None:
        client, exam, _ = signed_in
        ask(client, exam, email="barbara@example.com")
        mail_catcher.wait_for_count(1)
        package = Package.objects.get()
        Package.objects.filter(pk=package.pk).update(
            expires_at=datetime.now(UTC) + timedelta(hours=1, minutes=59)
        )
        status_url = reverse(
            "downloads:status", args=[exam.public_id, package.public_id]
        )
        page = client.get(status_url).content.decode()
        maintenance.run_maintenance()
        maintenance.run_maintenance()
        assert "This file will be deleted in less than 2 hours." in page
        mail_catcher.wait_for_count(2)
        time.sleep(0.3)
        assert len(mail_catcher.messages) == 2
        assert (
            mail_catcher.messages[1]["Subject"] == "Your download will be deleted soon"
        )
        assert PackageNotice.objects.get().warning_sent_at is not None

    def test_new_request_after_expiry_starts_over(self, signed_in) -> None:
        client, exam, _ = signed_in
        ask(client, exam)
        Package.objects.update(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        maintenance.run_maintenance()
        ask(client, exam)
        assert Package.objects.filter(status=Package.Status.READY).count() == 1
        assert Package.objects.filter(status=Package.Status.EXPIRED).count() == 1

    def test_stalled_package_is_prepared_again(self, signed_in, settings) -> None:
        settings.TASKS = {
            "default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}
        }
        client, exam, _ = signed_in
        ask(client, exam)
        package = Package.objects.get()
        Package.objects.filter(pk=package.pk).update(
            status=Package.Status.PREPARING, heartbeat_at=datetime.now(UTC)
        )
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=6)):
            counts = maintenance.run_maintenance()
        assert counts["requeued"] == 1
        package.refresh_from_db()
        assert package.status == Package.Status.QUEUED

    def test_corrected_report_gets_a_new_package(self, signed_in) -> None:
        client, exam, _ = signed_in
        add_report(exam, "F", FINDINGS, datetime(2026, 11, 20, 18, tzinfo=UTC))
        first = ask(client, exam)["Location"]
        add_report(exam, "C", "IMPRESSION: Corrected.", datetime.now(UTC))
        second = ask(client, exam)["Location"]
        assert first != second
        assert Package.objects.filter(status=Package.Status.EXPIRED).count() == 1
        new = Package.objects.get(status=Package.Status.READY)
        assert new.content_key.startswith(f"{exam.report_versions.last().pk}:")

    def test_phi_tick_must_be_a_real_tick(self, signed_in) -> None:
        client, exam, _ = signed_in
        for value in ("0", "false", "", "yes"):
            response = client.post(
                request_url(exam), {"format": "zip", "acknowledge_phi": value}
            )
            assert response.status_code == 400, value
        assert not Package.objects.exists()

    def test_notice_emails_are_limited_per_client(
        self, signed_in, mail_catcher
    ) -> None:
        client, exam, _ = signed_in
        for _ in range(12):
            ask(client, exam, email="someone@example.com")
        mail_catcher.wait_for_count(10)
        time.sleep(0.3)
        assert len(mail_catcher.messages) == 10

    def test_download_is_audited(self, signed_in) -> None:
        from viewbox.audit.models import AuditEvent

        client, exam, _ = signed_in
        ask(client, exam)
        package = Package.objects.get()
        client.get(reverse("downloads:file", args=[exam.public_id, package.public_id]))
        actions = set(AuditEvent.objects.values_list("action", flat=True))
        assert {"download.request", "download.file"} <= actions


@pytest.mark.django_db(transaction=True)
class TestAccountDownloads:
    def test_account_session_downloads_too(self, maryland, tmp_path) -> None:
        from django.contrib.auth import get_user_model

        from viewbox.accounts.models import Account

        barbara = make_patient(
            maryland, "DEMO-2001", "Barbara", "Sample", date(1975, 9, 30)
        )
        exam = make_exam(barbara, maryland, "ACC1")
        import_ct(exam, tmp_path)
        user = get_user_model().objects.create_user(
            "barbara.sample", password="a long passphrase"
        )
        Account.objects.create(user=user, patient=barbara)
        client = Client()
        client.post(
            reverse("accounts:log_in", args=[maryland.group.slug, maryland.slug]),
            {"user_id": "barbara.sample", "password": "a long passphrase"},
        )
        response = ask(client, exam)
        assert response.status_code == 302
        package = Package.objects.get()
        assert package.status == Package.Status.READY
        file_url = reverse("downloads:file", args=[exam.public_id, package.public_id])
        assert client.get(file_url).status_code == 200
