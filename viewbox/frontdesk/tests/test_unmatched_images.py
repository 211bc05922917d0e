import html
import logging
import uuid
from datetime import date

import pydicom
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import dateformat, timezone
from django.utils.formats import get_format
from pydicom.uid import generate_uid

from viewbox.audit.models import AuditEvent
from viewbox.conftest import package_path
from viewbox.ingest.dicom_import import import_dicom_file
from viewbox.records.models import Study


@pytest.fixture
def waiting_study(db: None) -> Study:
    return Study.objects.create(
        study_instance_uid="1.2.826.0.1.3680043.8.498.1",
        accession_number="ACC-TYPO-1",
        patient_id="MRN-UNKNOWN",
        study_date=date(2026, 11, 20),
    )


@pytest.mark.django_db
class TestUnmatchedImages:
    def test_list_shows_only_waiting_studies(self, staff_client, waiting_study, exam):
        Study.objects.create(
            study_instance_uid="1.2.826.0.1.3680043.8.498.2",
            accession_number="ACC-MATCHED",
            exam=exam,
        )
        response = staff_client.get(reverse("frontdesk:unmatched_images"))
        assert b"ACC-TYPO-1" in response.content
        assert b"ACC-MATCHED" not in response.content

    def test_unknown_accession_lists_no_exam(self, staff_client, waiting_study):
        url = reverse("frontdesk:choose_exam", args=[waiting_study.pk])
        response = staff_client.post(url, {"accession_number": "NOPE"})
        assert b"No exam has this accession number." in response.content

    def test_accession_lists_the_exam_to_choose(
        self, staff_client, waiting_study, exam
    ) -> None:
        url = reverse("frontdesk:choose_exam", args=[waiting_study.pk])
        response = staff_client.post(url, {"accession_number": " ACC-FD-1 "})
        assert b"Fiona Testpatient (MRN-FD-1)" in response.content
        assert str(exam.public_id).encode() in response.content

    def test_invalid_exam_id_is_not_found(self, staff_client, waiting_study) -> None:
        url = reverse("frontdesk:attach_images", args=[waiting_study.pk])
        for value in ["not-a-uuid", str(uuid.uuid4())]:
            assert staff_client.post(url, {"exam": value}).status_code == 404
        waiting_study.refresh_from_db()
        assert waiting_study.exam is None

    def test_attached_study_cannot_be_attached_again(
        self, staff_client, waiting_study, exam
    ) -> None:
        Study.objects.filter(pk=waiting_study.pk).update(exam=exam)
        url = reverse("frontdesk:attach_images", args=[waiting_study.pk])
        response = staff_client.post(url, {"exam": str(exam.public_id)})
        assert response.status_code == 404

    def test_attach_moves_the_study_to_the_exam(
        self, staff_client, staff_member, waiting_study, exam
    ) -> None:
        url = reverse("frontdesk:attach_images", args=[waiting_study.pk])
        # The study has no stored file, so staff must confirm the choice.
        response = staff_client.post(
            url, {"exam": str(exam.public_id), "confirm_mismatch": "on"}, follow=True
        )
        assert b"The images are attached to the exam." in response.content
        waiting_study.refresh_from_db()
        assert waiting_study.exam == exam
        event = AuditEvent.objects.get(action="images.attach")
        assert event.actor_kind == "staff"
        assert event.actor_id == str(staff_member.pk)
        assert event.exam_id == exam.pk


def import_waiting_ct(
    tmp_path,
    name: str,
    birth: str,
    *,
    accession: str = "ACC-TYPO-2",
    study_uid: str | None = None,
    modality: str = "CT",
) -> Study:
    """Import a real CT whose accession number matches no order yet.

    With ``study_uid``, the file joins that study as a new series.
    """
    ds = pydicom.dcmread(package_path("data_store", "data/693_J2KR.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for any name
    ds.PatientName = name
    ds.PatientBirthDate = birth
    ds.PatientID = "MRN-UNKNOWN"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    import_dicom_file(path)
    return Study.objects.get(study_instance_uid=ds.StudyInstanceUID)


@pytest.mark.django_db
class TestAttachChecksThePatient:
    def test_choice_lists_the_other_patient(self, staff_client, exam, tmp_path):
        study = import_waiting_ct(tmp_path, "OTHER^OLIVE", "19600101")
        choose = reverse("frontdesk:choose_exam", args=[study.pk])
        page = staff_client.post(choose, {"accession_number": "ACC-FD-1"})
        assert b"OLIVE OTHER" in page.content
        assert b"The name or date of birth differs from the images." in page.content

    def test_malformed_header_values_are_not_logged(
        self, staff_client, exam, tmp_path, caplog, recwarn
    ) -> None:
        study = import_waiting_ct(tmp_path, "OTHER^OLIVE", "1960010X")
        choose = reverse("frontdesk:choose_exam", args=[study.pk])
        with caplog.at_level(logging.DEBUG):
            page = staff_client.post(choose, {"accession_number": "ACC-FD-1"})
        assert b"Olive OTHER" in page.content or b"OLIVE OTHER" in page.content
        assert "1960010X" not in caplog.text
        assert not [w for w in recwarn if "1960010X" in str(w.message)]

    def test_matching_images_attach_at_once(self, staff_client, exam, tmp_path) -> None:
        study = import_waiting_ct(tmp_path, "TESTPATIENT^FIONA", "19800412")
        choose = reverse("frontdesk:choose_exam", args=[study.pk])
        page = staff_client.post(choose, {"accession_number": "ACC-FD-1"})
        assert b"differs from the images" not in page.content
        attach = reverse("frontdesk:attach_images", args=[study.pk])
        staff_client.post(attach, {"exam": str(exam.public_id)})
        study.refresh_from_db()
        assert study.exam == exam


def page_text(response) -> str:
    """Return a response's HTML with entities decoded, for exact messages."""
    return html.unescape(response.content.decode())


@pytest.mark.django_db
class TestMismatchNeedsConfirmation:
    def test_unconfirmed_mismatch_shows_the_choice_again(
        self, staff_client, exam, tmp_path, caplog
    ) -> None:
        study = import_waiting_ct(tmp_path, "OTHER^OLIVE", "19600101")
        attach = reverse("frontdesk:attach_images", args=[study.pk])
        with caplog.at_level(logging.DEBUG):
            response = staff_client.post(attach, {"exam": str(exam.public_id)})

        assert response.status_code == 400
        text = page_text(response)
        assert (
            "Not attached yet: the images' patient details differ from the "
            "exam's patient." in text
        )
        assert (
            "Name: the images say OLIVE OTHER; the exam's patient is "
            "Fiona Testpatient." in text
        )
        assert (
            "Date of birth: the images say January 1, 1960; the exam's patient "
            "was born April 12, 1980." in text
        )
        assert 'value="ACC-FD-1"' in text
        assert "You chose this exam." in text
        assert f'name="exam" value="{exam.public_id}"' in text
        assert 'aria-describedby="mismatch-message"' in text
        study.refresh_from_db()
        assert study.exam is None
        assert not AuditEvent.objects.filter(action="images.attach").exists()
        for detail in ("OLIVE", "OTHER", "Fiona", "Testpatient", "1960", "1980"):
            assert detail not in caplog.text

    def test_only_differing_birth_date_is_named(
        self, staff_client, exam, tmp_path
    ) -> None:
        study = import_waiting_ct(tmp_path, "TESTPATIENT^FIONA", "19800413")
        attach = reverse("frontdesk:attach_images", args=[study.pk])
        response = staff_client.post(attach, {"exam": str(exam.public_id)})
        assert response.status_code == 400
        text = page_text(response)
        assert (
            "Date of birth: the images say April 13, 1980; the exam's patient "
            "was born April 12, 1980." in text
        )
        assert "Name: the images say" not in text

    def test_relative_without_birth_date_needs_confirmation(
        self, staff_client, exam, tmp_path
    ) -> None:
        # Same family name, another given name, and no birth date to tell.
        study = import_waiting_ct(tmp_path, "TESTPATIENT^ROBERT", "")
        attach = reverse("frontdesk:attach_images", args=[study.pk])
        response = staff_client.post(attach, {"exam": str(exam.public_id)})
        assert response.status_code == 400
        text = page_text(response)
        assert (
            "Name: the images say ROBERT TESTPATIENT; the exam's patient is "
            "Fiona Testpatient." in text
        )
        assert "Date of birth: the images say" not in text
        study.refresh_from_db()
        assert study.exam is None

    def test_name_groups_after_equals_are_not_shown(
        self, staff_client, exam, tmp_path
    ) -> None:
        study = import_waiting_ct(
            tmp_path, "TESTPATIENT^FIONA=テスト^フィオナ", "19800412"
        )
        choose = reverse("frontdesk:choose_exam", args=[study.pk])
        page = page_text(staff_client.post(choose, {"accession_number": "ACC-FD-1"}))
        assert "FIONA TESTPATIENT" in page
        assert "テスト" not in page
        assert "differs from the images" not in page

    def test_only_differing_name_is_named(self, staff_client, exam, tmp_path):
        study = import_waiting_ct(tmp_path, "OTHER^FIONA", "19800412")
        attach = reverse("frontdesk:attach_images", args=[study.pk])
        response = staff_client.post(attach, {"exam": str(exam.public_id)})
        assert response.status_code == 400
        text = page_text(response)
        assert (
            "Name: the images say FIONA OTHER; the exam's patient is "
            "Fiona Testpatient." in text
        )
        assert "Date of birth: the images say" not in text

    def test_unreadable_images_are_named(
        self, staff_client, waiting_study, exam
    ) -> None:
        attach = reverse("frontdesk:attach_images", args=[waiting_study.pk])
        response = staff_client.post(attach, {"exam": str(exam.public_id)})
        assert response.status_code == 400
        text = page_text(response)
        assert "The name and date of birth in the images cannot be read." in text
        waiting_study.refresh_from_db()
        assert waiting_study.exam is None

    def test_confirmed_mismatch_attaches(
        self, staff_client, staff_member, exam, tmp_path
    ) -> None:
        study = import_waiting_ct(tmp_path, "OTHER^OLIVE", "19600101")
        attach = reverse("frontdesk:attach_images", args=[study.pk])
        response = staff_client.post(
            attach, {"exam": str(exam.public_id), "confirm_mismatch": "on"}
        )
        assert response.status_code == 302
        assert response["Location"] == reverse("frontdesk:unmatched_images")
        study.refresh_from_db()
        assert study.exam == exam
        event = AuditEvent.objects.get(action="images.attach")
        assert event.actor_id == str(staff_member.pk)
        assert event.exam_id == exam.pk


@pytest.mark.django_db
class TestWaitingStudyDetails:
    def test_study_without_files_says_so(self, staff_client, waiting_study):
        response = staff_client.get(reverse("frontdesk:unmatched_images"))
        text = page_text(response)
        assert "Patient name not readable from the images" in text
        assert "MRN-UNKNOWN" in text
        assert "ACC-TYPO-1" in text
        assert "November 20, 2026" in text
        assert "<dt>Images</dt><dd>0</dd>" in text
        assert "<dt>Modality</dt><dd>-</dd>" in text
        assert "<dt>Date of birth</dt>" not in text

    def test_study_shows_what_the_images_carry(self, staff_client, tmp_path) -> None:
        study = import_waiting_ct(tmp_path, "OTHER^OLIVE", "19600101")
        import_waiting_ct(
            tmp_path,
            "OTHER^OLIVE",
            "19600101",
            study_uid=study.study_instance_uid,
            modality="PT",
        )
        response = staff_client.get(reverse("frontdesk:unmatched_images"))
        text = page_text(response)
        assert f'<h2 id="waiting-study-{study.pk}">OLIVE OTHER</h2>' in text
        assert "<dt>Patient ID</dt><dd>MRN-UNKNOWN</dd>" in text
        assert "<dt>Date of birth</dt><dd>January 1, 1960</dd>" in text
        assert "<dt>Modality</dt><dd>CT, PT</dd>" in text
        assert "<dt>Images</dt><dd>2</dd>" in text
        assert "<dt>Accession number</dt><dd>ACC-TYPO-2</dd>" in text
        received = dateformat.format(
            timezone.localtime(study.received_at), get_format("DATETIME_FORMAT")
        )
        # A waiting study belongs to no imaging group yet, so the zone is named.
        assert f"<dt>Received</dt><dd>{received} UTC</dd>" in text

    def test_queries_do_not_grow_with_studies(self, staff_client, tmp_path) -> None:
        url = reverse("frontdesk:unmatched_images")
        import_waiting_ct(tmp_path, "OTHER^OLIVE", "19600101", accession="ACC-Q-1")
        with CaptureQueriesContext(connection) as one_study:
            staff_client.get(url)
        for number in range(2, 5):
            import_waiting_ct(
                tmp_path, "OTHER^OLIVE", "19600101", accession=f"ACC-Q-{number}"
            )
        with CaptureQueriesContext(connection) as four_studies:
            response = staff_client.get(url)
        assert "ACC-Q-4" in page_text(response)
        assert len(four_studies) == len(one_study)

    def test_list_is_split_into_pages(self, staff_client) -> None:
        Study.objects.bulk_create(
            Study(study_instance_uid=f"1.2.826.0.1.3680043.8.498.{number}")
            for number in range(100, 126)
        )
        url = reverse("frontdesk:unmatched_images")
        first = page_text(staff_client.get(url))
        assert first.count('class="record"') == 25
        assert "Page 1 of 2" in first
        assert 'href="?page=2"' in first
        second = page_text(staff_client.get(url, {"page": "2"}))
        assert second.count('class="record"') == 1
        assert 'href="?page=1"' in second
        invalid = page_text(staff_client.get(url, {"page": "not-a-number"}))
        assert "Page 1 of 2" in invalid
