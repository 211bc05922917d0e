"""Entries written by the other apps at the points where health data is touched."""

from datetime import date

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.test import Client
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from viewbox.accounts.models import Account
from viewbox.accounts.tests.test_sign_up_views import (  # noqa: F401 (fixture)
    barbara,
    emailed_code,
    sign_up_until_code,
)
from viewbox.accounts.tests.test_sign_up_views import url as sign_up_url
from viewbox.audit.models import AuditEvent
from viewbox.conftest import (
    log_in_verified_staff,
    make_exam,
    make_patient,
    sign_in_with_icode,
)
from viewbox.records.models import Patient

PASSWORD = "a long patient passphrase"
NEW_PASSWORD = "another long patient passphrase"


@pytest.fixture
def rosa_account(maryland) -> Account:
    rosa = make_patient(maryland, "MRN-ROSA", "Rosa", "Testcase", date(1980, 5, 1))
    make_exam(rosa, maryland, "ACC-R1")
    user = get_user_model().objects.create_user("rosa.testcase", password=PASSWORD)
    return Account.objects.create(user=user, patient=rosa)


def location_url(name: str, location, *args: str) -> str:
    return reverse(name, args=[location.group.slug, location.slug, *args])


@pytest.mark.django_db
class TestSignOutIsRecorded:
    def test_account_sign_out_names_the_account_and_patient(
        self, client, maryland, rosa_account
    ) -> None:
        client.post(
            location_url("accounts:log_in", maryland),
            {"user_id": "rosa.testcase", "password": PASSWORD},
        )
        client.post(reverse("viewer:sign_out"), REMOTE_ADDR="192.0.2.7")
        event = AuditEvent.objects.get(action="sign_out")
        assert event.actor_kind == "account"
        assert event.actor_id == str(rosa_account.pk)
        assert event.patient_id == rosa_account.patient_id
        assert event.client_address == "192.0.2.7"

    def test_icode_sign_out_names_the_code(self, client, maryland) -> None:
        patient = make_patient(maryland, "MRN-IDA", "Ida", "Sample", date(1990, 1, 2))
        exam = make_exam(patient, maryland, "ACC-I1")
        sign_in_with_icode(client, exam)
        client.post(reverse("viewer:sign_out"))
        event = AuditEvent.objects.get(action="sign_out")
        assert event.actor_kind == "icode"
        assert event.patient_id == patient.pk

    def test_sign_out_without_session_records_nothing(self, client, db) -> None:
        client.post(reverse("viewer:sign_out"))
        assert not AuditEvent.objects.filter(action="sign_out").exists()


@pytest.mark.django_db
class TestStaffLogOutIsRecorded:
    def test_admin_log_out_is_recorded(self) -> None:
        user = get_user_model().objects.create_user("fred.frontdesk", is_staff=True)
        client = Client()
        log_in_verified_staff(client, user)
        client.post("/staff/logout/")
        event = AuditEvent.objects.get(action="staff.log_out")
        assert event.actor_kind == "staff"
        assert event.actor_id == str(user.pk)


@pytest.mark.django_db
class TestPasswordResetIsRecorded:
    def test_new_password_from_reset_link_is_recorded(
        self, client, maryland, rosa_account
    ) -> None:
        user = rosa_account.user
        uid = urlsafe_base64_encode(force_bytes(user.pk))
        token = default_token_generator.make_token(user)
        response = client.get(
            location_url("accounts:reset_password", maryland, uid, token)
        )
        client.post(
            response["Location"],
            {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
        )
        event = AuditEvent.objects.get(action="account.password_reset")
        assert event.actor_kind == "account"
        assert event.actor_id == str(rosa_account.pk)
        assert event.patient_id == rosa_account.patient_id


@pytest.mark.django_db
@pytest.mark.usefixtures("barbara")
class TestSignUpIsRecorded:
    def test_wrong_email_code_and_new_account_are_recorded(
        self, client, maryland, mail_catcher
    ) -> None:
        sign_up_until_code(client, maryland)
        code = emailed_code(mail_catcher)
        wrong = "000000" if code.replace(" ", "").replace("-", "") != "000000" else "1"
        client.post(sign_up_url("accounts:email", maryland), {"code": wrong})
        client.post(
            sign_up_url("accounts:email", maryland),
            {"code": code},
            REMOTE_ADDR="192.0.2.9",
        )

        failed = AuditEvent.objects.get(action="account.email_code")
        assert failed.outcome == "failure"
        created = AuditEvent.objects.get(action="account.create")
        assert created.patient_id == Patient.objects.get(mrn="DEMO-2001").pk
        assert created.client_address == "192.0.2.9"
