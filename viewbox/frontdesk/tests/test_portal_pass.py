import re
from datetime import UTC, date, datetime

import pytest
import segno
import time_machine
from django.urls import reverse

from viewbox.access import codes
from viewbox.access.actions import issue_icode
from viewbox.access.models import ICode
from viewbox.audit.models import AuditEvent
from viewbox.conftest import make_exam, make_patient
from viewbox.frontdesk.tests.pdf_content import page_text, qr_matrix

CODE = re.compile(r"[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}")
PORTAL = "http://testserver/g/radnet-los-angeles/"


def print_pass(client, visit_id: int, exams, **options):
    data = {"exams": [exam.pk for exam in exams], **options}
    return client.post(reverse("frontdesk:print_pass", args=[visit_id]), data)


@pytest.mark.django_db
class TestFindVisit:
    def search(self, client, **fields):
        data = {"name": "", "birth_date": "", "accession_number": "", **fields}
        return client.post(reverse("frontdesk:find_visit"), data)

    def test_empty_search_asks_for_a_criterion(self, staff_client, exam) -> None:
        response = self.search(staff_client)
        assert (
            b"Enter a name, a date of birth or an accession number." in response.content
        )

    def test_wrong_birth_date_finds_nothing(self, staff_client, exam) -> None:
        response = self.search(staff_client, name="fiona", birth_date="1980-04-13")
        assert b"No visit matches." in response.content

    @pytest.mark.parametrize(
        "fields",
        [
            {"name": "testpat fio"},
            {"birth_date": "04/12/1980"},
            {"accession_number": "ACC-FD-1"},
        ],
    )
    def test_visit_is_found(self, staff_client, exam, fields) -> None:
        response = self.search(staff_client, **fields)
        link = reverse("frontdesk:visit", args=[exam.visit_id])
        assert link.encode() in response.content

    def test_visit_page_lists_its_exams(self, staff_client, exam) -> None:
        response = staff_client.get(reverse("frontdesk:visit", args=[exam.visit_id]))
        assert b"ACC-FD-1: CT CHEST WITHOUT CONTRAST" in response.content

    def test_icode_times_in_location_zone(self, staff_client, exam) -> None:
        # 7:21 AM UTC on December 5 is 11:21 PM on December 4 in California.
        with time_machine.travel(datetime(2026, 12, 5, 7, 21, tzinfo=UTC)):
            issue_icode(exam.visit)
        response = staff_client.get(reverse("frontdesk:visit", args=[exam.visit_id]))
        page = response.content.decode()
        assert "7:21 AM" not in page
        assert "December 4, 2026, 11:21 PM PST" in page


@pytest.mark.django_db
class TestPrintPass:
    def test_pass_without_exam_is_rejected(self, staff_client, exam) -> None:
        response = print_pass(staff_client, exam.visit_id, [])
        assert response.status_code == 400
        assert b"Choose at least one exam." in response.content
        assert not ICode.objects.exists()

    def test_exam_of_another_visit_is_rejected(self, staff_client, exam, california):
        other = make_exam(
            exam.visit.patient, california, "ACC-FD-9", day=date(2026, 1, 5)
        )
        response = print_pass(staff_client, exam.visit_id, [other])
        assert response.status_code == 400
        assert not ICode.objects.exists()

    def test_cancelled_exam_is_rejected(self, staff_client, exam, california):
        cancelled = make_exam(
            exam.visit.patient, california, "ACC-FD-8", status="cancelled"
        )
        response = print_pass(staff_client, exam.visit_id, [cancelled])
        assert response.status_code == 400
        assert not ICode.objects.exists()

    def test_pdf_is_a_private_attachment(self, staff_client, exam) -> None:
        response = print_pass(staff_client, exam.visit_id, [exam])
        assert response.status_code == 200
        assert response["Content-Type"] == "application/pdf"
        assert (
            response["Content-Disposition"] == 'attachment; filename="portal-pass.pdf"'
        )
        assert response["Cache-Control"] == "no-store"
        assert response.content.startswith(b"%PDF-")

    def test_pdf_shows_visit_code_and_portal(self, staff_client, exam) -> None:
        text = page_text(print_pass(staff_client, exam.visit_id, [exam]).content)
        assert "Fiona Testpatient" in text
        assert "Santa Monica Imaging Center, Santa Monica" in text
        assert "November 20, 2026" in text
        assert PORTAL in text
        # The text of a wrapped line comes out without the space at the break,
        # so the instructions are compared without spaces.
        instructions = "".join(text.split())
        assert "PatientPortalLogin" in instructions
        assert "EnterI-Code" in instructions
        assert "Createanewaccount" in instructions

    def test_printed_code_opens_the_visit(self, staff_client, exam) -> None:
        text = page_text(print_pass(staff_client, exam.visit_id, [exam]).content)
        printed = CODE.findall(text)
        assert len(printed) == 1
        icode = ICode.objects.get()
        assert icode.code_hash == codes.hash_code(codes.normalize_code(printed[0]))
        assert list(icode.exams.all()) == [exam]

    def test_qr_code_is_the_portal_address(self, staff_client, exam) -> None:
        pdf = print_pass(staff_client, exam.visit_id, [exam]).content
        expected = [list(row) for row in segno.make(PORTAL, error="m").matrix]
        assert qr_matrix(pdf) == expected

    def test_group_portal_url_is_preferred(self, staff_client, exam) -> None:
        group = exam.visit.location.group
        group.portal_url = "https://portal.example.org/la"
        group.save()
        pdf = print_pass(staff_client, exam.visit_id, [exam]).content
        assert "https://portal.example.org/la" in page_text(pdf)
        expected = segno.make("https://portal.example.org/la", error="m").matrix
        assert qr_matrix(pdf) == [list(row) for row in expected]

    def test_script_in_patient_name_is_printed_as_text(
        self, staff_client, california
    ) -> None:
        patient = make_patient(
            california,
            "MRN-FD-2",
            "<script>alert(1)</script>",
            "O'Brien & Co",
            date(1990, 1, 2),
        )
        exam = make_exam(patient, california, "ACC-FD-2", description="<b>MRI</b>")
        response = print_pass(staff_client, exam.visit_id, [exam])
        assert response.status_code == 200
        assert "<script>alert(1)</script> O'Brien & Co" in page_text(response.content)

    def test_one_code_per_exam_on_request(self, staff_client, exam, california) -> None:
        second = make_exam(
            exam.visit.patient, california, "ACC-FD-3", description="XR WRIST"
        )
        pdf = print_pass(
            staff_client, exam.visit_id, [exam, second], per_exam="on"
        ).content
        text = page_text(pdf)
        assert len(CODE.findall(text)) == 2
        assert "Opens: CT CHEST WITHOUT CONTRAST" in text
        assert "Opens: XR WRIST" in text
        assert [list(i.exams.all()) for i in ICode.objects.order_by("pk")] == [
            [exam],
            [second],
        ]

    def test_earlier_codes_keep_working_by_default(self, staff_client, exam) -> None:
        earlier, _ = issue_icode(exam.visit)
        print_pass(staff_client, exam.visit_id, [exam])
        earlier.refresh_from_db()
        assert earlier.revoked_at is None

    def test_earlier_codes_are_revoked_on_request(self, staff_client, exam) -> None:
        earlier, _ = issue_icode(exam.visit)
        print_pass(staff_client, exam.visit_id, [exam], revoke_older="on")
        earlier.refresh_from_db()
        assert earlier.revoked_at is not None
        assert ICode.objects.filter(revoked_at__isnull=True).count() == 1
        revoke = AuditEvent.objects.get(action="icode.revoke")
        assert revoke.actor_kind == "staff"

    def test_print_is_audited_per_exam(self, staff_client, staff_member, exam) -> None:
        print_pass(staff_client, exam.visit_id, [exam])
        event = AuditEvent.objects.get(action="frontdesk.print_pass")
        assert event.actor_kind == "staff"
        assert event.actor_id == str(staff_member.pk)
        assert event.patient_id == exam.visit.patient_id
        assert event.exam_id == exam.pk
