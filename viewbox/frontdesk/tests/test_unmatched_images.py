import logging
import uuid
from datetime import date

import pydicom
import pytest
from django.urls import reverse
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


def import_waiting_ct(tmp_path, name: str, birth: str) -> Study:
    """Import a real CT whose accession number matches no order yet."""
    ds = pydicom.dcmread(package_path("data_store", "data/693_J2KR.dcm"))
    ds.PatientName = name
    ds.PatientBirthDate = birth
    ds.PatientID = "MRN-UNKNOWN"
    ds.AccessionNumber = "ACC-TYPO-2"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "waiting.dcm"
    ds.save_as(path, enforce_file_format=True)
    import_dicom_file(path)
    return Study.objects.get(accession_number="ACC-TYPO-2")


@pytest.mark.django_db
class TestAttachChecksThePatient:
    def test_other_patients_images_need_a_confirmation(
        self, staff_client, exam, tmp_path
    ) -> None:
        study = import_waiting_ct(tmp_path, "OTHER^OLIVE", "19600101")
        choose = reverse("frontdesk:choose_exam", args=[study.pk])
        page = staff_client.post(choose, {"accession_number": "ACC-FD-1"})
        assert b"Olive OTHER" in page.content or b"OLIVE OTHER" in page.content
        assert b"differs from the images" in page.content
        attach = reverse("frontdesk:attach_images", args=[study.pk])
        response = staff_client.post(attach, {"exam": str(exam.public_id)}, follow=True)
        assert b"Tick the confirmation" in response.content
        study.refresh_from_db()
        assert study.exam is None
        staff_client.post(
            attach, {"exam": str(exam.public_id), "confirm_mismatch": "on"}
        )
        study.refresh_from_db()
        assert study.exam == exam

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
