from datetime import date

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from viewbox.audit.models import AuditEvent
from viewbox.conftest import log_in_verified_staff, make_exam, make_patient


@pytest.fixture
def staff(db) -> Client:
    user = get_user_model().objects.create_superuser("sam.staff", is_staff=True)
    client = Client()
    log_in_verified_staff(client, user)
    return client


@pytest.mark.django_db
class TestStaffViewsAreRecorded:
    def test_missing_exam_records_nothing(self, staff) -> None:
        response = staff.get("/staff/records/exam/999999/change/")
        assert response.status_code == 302
        assert not AuditEvent.objects.filter(action="staff.view_exam").exists()

    def test_exam_page_records_patient_and_exam(self, staff, maryland) -> None:
        patient = make_patient(maryland, "MRN-V", "Vera", "Sample", date(1985, 3, 4))
        exam = make_exam(patient, maryland, "ACC-V1")

        response = staff.get(f"/staff/records/exam/{exam.pk}/change/")

        assert response.status_code == 200
        event = AuditEvent.objects.get(action="staff.view_exam")
        assert event.actor_kind == "staff"
        assert event.patient_id == patient.pk
        assert event.exam_id == exam.pk

    def test_exam_list_records_nothing(self, staff, maryland) -> None:
        assert staff.get("/staff/records/exam/").status_code == 200
        assert not AuditEvent.objects.filter(action="staff.view_exam").exists()
