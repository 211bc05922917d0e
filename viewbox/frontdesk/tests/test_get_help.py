import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from viewbox.access.actions import issue_icode
from viewbox.access.models import ICode
from viewbox.audit.models import AuditEvent
from viewbox.frontdesk.models import HelpRequest
from viewbox.frontdesk.tasks import send_help_answer

ISSUED = datetime(2026, 8, 1, 16, 0, tzinfo=UTC)
APPROVED = ISSUED + timedelta(days=100)
START = "http://testserver/"


def without_csrf_token(content: bytes) -> bytes:
    """Return a page without its CSRF token, which differs on every response."""
    return re.sub(rb'name="csrfmiddlewaretoken" value="[^"]*"', b"", content)


def help_url(exam) -> str:
    location = exam.visit.location
    return reverse("help:get_help", args=[location.group.slug, location.slug])


def ask_for_help(client: Client, exam, code: str, **changes):
    data = {
        "name": "Fiona Testpatient",
        "birth_date_month": 4,
        "birth_date_day": 12,
        "birth_date_year": 1980,
        "code": code,
        "email": "fiona@example.com",
        **changes,
    }
    return client.post(help_url(exam), data, REMOTE_ADDR="198.51.100.7")


@pytest.fixture
def expired_code(exam) -> tuple[ICode, str]:
    with time_machine.travel(ISSUED, tick=False):
        return issue_icode(exam.visit)


def approve(client: Client, help_request: HelpRequest):
    url = reverse("frontdesk:approve_help", args=[help_request.pk])
    return client.post(url, follow=True)


def decline(client: Client, help_request: HelpRequest):
    url = reverse("frontdesk:decline_help", args=[help_request.pk])
    return client.post(url, follow=True)


@pytest.mark.django_db
class TestGetHelpForm:
    def test_sign_in_page_links_to_help(self, exam) -> None:
        location = exam.visit.location
        url = reverse("viewer:icode_sign_in", args=[location.group.slug, location.slug])
        response = Client().get(url)
        assert b"Code expired? Get help" in response.content
        assert help_url(exam).encode() in response.content

    def test_form_without_csrf_token_is_rejected(self, exam, expired_code) -> None:
        response = ask_for_help(Client(enforce_csrf_checks=True), exam, expired_code[1])
        assert response.status_code == 403
        assert not HelpRequest.objects.exists()

    def test_missing_fields_are_named(self, exam) -> None:
        response = Client().post(help_url(exam), {})
        assert response.status_code == 400
        assert b"Enter the patient&#x27;s full name." in response.content
        assert b"Enter your email address." in response.content
        assert not HelpRequest.objects.exists()

    def test_wrong_birth_date_gets_the_same_answer(self, exam, expired_code) -> None:
        right = ask_for_help(Client(), exam, expired_code[1])
        wrong = ask_for_help(Client(), exam, expired_code[1], birth_date_day=13)
        unknown = ask_for_help(Client(), exam, "2345-6789-ABCD-EFGH")
        assert right.status_code == wrong.status_code == unknown.status_code == 200
        assert without_csrf_token(right.content) == without_csrf_token(wrong.content)
        assert without_csrf_token(right.content) == without_csrf_token(unknown.content)
        assert b"checks your request and emails you the answer" in right.content

    def test_request_keeps_only_the_code_hash(self, exam, expired_code) -> None:
        icode, code = expired_code
        ask_for_help(Client(), exam, code.lower().replace("-", " "))
        help_request = HelpRequest.objects.get()
        assert help_request.code_hash == icode.code_hash
        assert help_request.status == "pending"
        event = AuditEvent.objects.get(action="icode.help_request")
        assert event.client_address == "198.51.100.7"

    def test_sixth_request_in_an_hour_is_dropped(self, exam, expired_code) -> None:
        answers = [ask_for_help(Client(), exam, expired_code[1]) for _ in range(6)]
        assert HelpRequest.objects.count() == 5
        first, dropped = answers[0].content, answers[5].content
        assert without_csrf_token(dropped) == without_csrf_token(first)


@pytest.mark.django_db
class TestAnswerHelp:
    def test_wrong_birth_date_cannot_be_approved(
        self, staff_client, exam, expired_code
    ) -> None:
        icode, code = expired_code
        ask_for_help(Client(), exam, code, birth_date_day=13)
        help_request = HelpRequest.objects.get()
        queue = staff_client.get(reverse("frontdesk:help_queue"))
        assert b"No match" in queue.content
        assert b"Approve" not in queue.content

        response = approve(staff_client, help_request)
        assert b"No match: the code, name and date of birth fit no I-Code." in (
            response.content
        )
        help_request.refresh_from_db()
        assert help_request.status == "pending"
        assert ICode.objects.get().expires_at == icode.expires_at
        assert not AuditEvent.objects.filter(action="icode.help_approve").exists()

    def test_queue_time_in_location_zone(self, staff_client, exam, expired_code):
        # 7:21 AM UTC on December 5 is 11:21 PM on December 4 in California.
        with time_machine.travel(datetime(2026, 12, 5, 7, 21, tzinfo=UTC)):
            ask_for_help(Client(), exam, expired_code[1])
        queue = staff_client.get(reverse("frontdesk:help_queue")).content.decode()
        assert "7:21 AM" not in queue
        assert "December 4, 2026, 11:21 PM PST" in queue

    def test_wrong_name_cannot_be_approved(self, staff_client, exam, expired_code):
        ask_for_help(Client(), exam, expired_code[1], name="Fiona Otherpatient")
        approve(staff_client, HelpRequest.objects.get())
        assert HelpRequest.objects.get().status == "pending"

    def test_revoked_code_cannot_be_approved(self, staff_client, exam, expired_code):
        icode, code = expired_code
        ICode.objects.filter(pk=icode.pk).update(revoked_at=ISSUED)
        ask_for_help(Client(), exam, code)
        approve(staff_client, HelpRequest.objects.get())
        assert HelpRequest.objects.get().status == "pending"

    def test_code_of_another_group_cannot_be_approved(
        self, staff_client, exam, expired_code, maryland
    ) -> None:
        location = maryland
        url = reverse("help:get_help", args=[location.group.slug, location.slug])
        Client().post(
            url,
            {
                "name": "Fiona Testpatient",
                "birth_date_month": 4,
                "birth_date_day": 12,
                "birth_date_year": 1980,
                "code": expired_code[1],
                "email": "fiona@example.com",
            },
        )
        approve(staff_client, HelpRequest.objects.get())
        assert HelpRequest.objects.get().status == "pending"

    def test_approval_extends_exactly_90_days(
        self, staff_client, staff_member, exam, expired_code
    ) -> None:
        icode, code = expired_code
        ask_for_help(Client(), exam, code, name="  fiona  TESTPATIENT ")
        help_request = HelpRequest.objects.get()
        with time_machine.travel(APPROVED, tick=False):
            response = approve(staff_client, help_request)
        assert b"Approved: the I-Code works for 90 more days." in response.content
        icode.refresh_from_db()
        assert icode.expires_at == APPROVED + timedelta(days=90)
        help_request.refresh_from_db()
        assert help_request.status == "approved"
        assert help_request.decided_by == staff_member
        event = AuditEvent.objects.get(action="icode.help_approve")
        assert event.actor_kind == "staff"
        assert event.actor_id == str(staff_member.pk)
        assert event.patient_id == exam.visit.patient_id

    def test_renewed_code_signs_in_again(self, staff_client, exam, expired_code):
        ask_for_help(Client(), exam, expired_code[1])
        approve(staff_client, HelpRequest.objects.get())
        location = exam.visit.location
        url = reverse("viewer:icode_sign_in", args=[location.group.slug, location.slug])
        response = Client().post(
            url,
            {
                "code": expired_code[1],
                "birth_date_month": 4,
                "birth_date_day": 12,
                "birth_date_year": 1980,
            },
        )
        assert response.status_code == 302

    def test_answered_request_cannot_be_answered_again(
        self, staff_client, exam, expired_code
    ) -> None:
        ask_for_help(Client(), exam, expired_code[1])
        help_request = HelpRequest.objects.get()
        decline(staff_client, help_request)
        response = approve(staff_client, help_request)
        assert b"This request was already answered." in response.content
        assert HelpRequest.objects.get().status == "declined"

    def test_decline_is_audited(self, staff_client, staff_member, exam, expired_code):
        ask_for_help(Client(), exam, expired_code[1])
        response = decline(staff_client, HelpRequest.objects.get())
        assert b"Declined: the person is told to call." in response.content
        event = AuditEvent.objects.get(action="icode.help_decline")
        assert event.actor_id == str(staff_member.pk)


@pytest.mark.django_db
class TestAnswerEmail:
    def test_approval_email_has_no_health_information(
        self, staff_client, exam, expired_code, mail_catcher
    ) -> None:
        _, code = expired_code
        ask_for_help(Client(), exam, code)
        help_request = HelpRequest.objects.get()
        with time_machine.travel(APPROVED, tick=False):
            approve(staff_client, help_request)
        send_help_answer.call(help_request.pk, START)

        message = mail_catcher.wait_for_count(1)[0]
        assert message["To"] == "fiona@example.com"
        assert message["Subject"] == "Your Patient Portal I-Code works again"
        whole = message.as_string()
        assert "works again until February 7, 2027" in whole
        assert START in whole
        for private in [
            "Fiona",
            "Testpatient",
            "1980",
            "RadNet",
            "Santa Monica",
            "CT CHEST",
            "ACC-FD-1",
            code,
            code.replace("-", ""),
        ]:
            assert private not in whole, private

    def test_approval_date_in_location_zone(
        self, staff_client, exam, expired_code, mail_catcher
    ) -> None:
        # Approved at 11:21 PM PST on December 4, so the code stops at
        # 11:21 PM PST on March 4, which is already March 5 in UTC.
        approved = datetime(2026, 12, 5, 7, 21, tzinfo=UTC)
        ask_for_help(Client(), exam, expired_code[1])
        help_request = HelpRequest.objects.get()
        with time_machine.travel(approved, tick=False):
            approve(staff_client, help_request)
            send_help_answer.call(help_request.pk, START)

        whole = mail_catcher.wait_for_count(1)[0].as_string()
        assert "March 5, 2027" not in whole
        assert "works again until March 4, 2027" in whole

    def test_decline_email_says_to_call(
        self, staff_client, exam, expired_code, mail_catcher
    ) -> None:
        ask_for_help(Client(), exam, expired_code[1])
        help_request = HelpRequest.objects.get()
        decline(staff_client, help_request)
        send_help_answer.call(help_request.pk, START)

        message = mail_catcher.wait_for_count(1)[0]
        assert message["Subject"] == "Your request about a Patient Portal I-Code"
        assert "Please call your imaging center." in message.as_string()
        assert "Fiona" not in message.as_string()

    def test_answer_email_is_queued_for_the_worker(
        self, staff_client, exam, expired_code, django_capture_on_commit_callbacks
    ) -> None:
        ask_for_help(Client(), exam, expired_code[1])
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            decline(staff_client, HelpRequest.objects.get())
        assert len(callbacks) == 1
