import logging
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from viewbox.access.actions import issue_icode
from viewbox.access.codes import generate_code
from viewbox.access.models import ThrottleEvent
from viewbox.audit.models import AuditEvent
from viewbox.conftest import make_exam, make_patient

INVALID = "The I-Code or date of birth is not right."
THROTTLED = "Too many attempts. Please wait 15 minutes, then try again."
EXPIRED = "This I-Code has expired."
BIRTH = date(1980, 4, 12)


@pytest.fixture
def alice_code(california):
    alice = make_patient(california, "DEMO-1001", "Alice", "Testpatient", BIRTH)
    exam = make_exam(alice, california, "ACC1001")
    _, code = issue_icode(exam.visit)
    return code


def is_signed_out(client: Client) -> bool:
    """Return whether the exam list sends this browser back to the start."""
    response = client.get(reverse("viewer:exam_list"))
    start = reverse("viewer:start")
    return response.status_code == 302 and response["Location"].split("?")[0] == start


def sign_in_url(location) -> str:
    return reverse("viewer:icode_sign_in", args=[location.group.slug, location.slug])


def post_code(
    client: Client, location, code: str, birth: date = BIRTH, address: str = "127.0.0.1"
):
    return client.post(
        sign_in_url(location),
        {
            "code": code,
            "birth_date_month": birth.month,
            "birth_date_day": birth.day,
            "birth_date_year": birth.year,
        },
        REMOTE_ADDR=address,
    )


@pytest.mark.django_db
class TestRefusedSignIn:
    def test_wrong_code_is_refused(self, client, california, alice_code) -> None:
        response = post_code(client, california, "2222-3333-4444-5555")
        assert response.status_code == 400
        assert INVALID in response.content.decode()

    def test_wrong_birth_date_gets_the_same_message(
        self, client, california, alice_code
    ) -> None:
        response = post_code(client, california, alice_code, birth=date(1980, 4, 13))
        assert response.status_code == 400
        assert INVALID in response.content.decode()

    def test_refused_sign_in_opens_nothing(
        self, client, california, alice_code
    ) -> None:
        post_code(client, california, alice_code, birth=date(1981, 4, 12))
        assert is_signed_out(client)

    def test_code_of_another_group_is_refused(
        self, client, california, maryland, alice_code
    ) -> None:
        response = post_code(client, maryland, alice_code)
        assert INVALID in response.content.decode()

    def test_expired_code_is_refused(self, client, california, alice_code) -> None:
        with time_machine.travel(datetime.now(UTC) + timedelta(days=90, seconds=1)):
            response = post_code(client, california, alice_code)
        assert response.status_code == 400
        assert EXPIRED in response.content.decode()

    def test_code_still_works_on_its_last_day(
        self, client, california, alice_code
    ) -> None:
        with time_machine.travel(datetime.now(UTC) + timedelta(days=89, hours=23)):
            response = post_code(client, california, alice_code)
        assert response.status_code == 302

    def test_session_ends_when_the_code_expires(
        self, client, california, alice_code
    ) -> None:
        post_code(client, california, alice_code)
        with time_machine.travel(datetime.now(UTC) + timedelta(days=90, minutes=1)):
            assert is_signed_out(client)

    def test_revoked_code_is_refused(self, client, california, alice_code) -> None:
        from viewbox.access.models import ICode

        ICode.objects.update(revoked_at=datetime.now(UTC))
        assert INVALID in post_code(client, california, alice_code).content.decode()

    def test_missing_fields_are_named(self, client, california) -> None:
        response = client.post(sign_in_url(california), {})
        text = response.content.decode()
        assert response.status_code == 400
        assert "Enter the I-Code from your Portal Pass." in text
        assert "Enter your date of birth." in text

    def test_impossible_birth_date_is_refused(
        self, client, california, alice_code
    ) -> None:
        response = client.post(
            sign_in_url(california),
            {
                "code": alice_code,
                "birth_date_month": 2,
                "birth_date_day": 30,
                "birth_date_year": 1980,
            },
        )
        assert (
            "Enter a real date of birth, for example 4 12 1980."
            in response.content.decode()
        )

    def test_failure_is_audited_without_the_code(
        self, client, california, alice_code
    ) -> None:
        post_code(client, california, "2222-3333-4444-5555")
        event = AuditEvent.objects.get(action="icode.sign_in")
        assert event.outcome == "failure"
        assert event.client_address == "127.0.0.1"


@pytest.mark.django_db
class TestAcceptedSignIn:
    def test_right_code_opens_the_exam_list(
        self, client, california, alice_code
    ) -> None:
        response = post_code(client, california, alice_code)
        assert response.status_code == 302
        assert response["Location"] == reverse("viewer:exam_list")
        assert client.get(reverse("viewer:exam_list"), follow=True).status_code == 200
        assert not is_signed_out(client)

    def test_code_in_lower_case_without_dashes_works(
        self, client, california, alice_code
    ) -> None:
        typed = alice_code.replace("-", "").lower()
        assert post_code(client, california, typed).status_code == 302

    def test_session_id_changes_on_sign_in(
        self, client, california, alice_code
    ) -> None:
        client.get(sign_in_url(california))
        session = client.session
        session["planted"] = True
        session.save()
        before = session.session_key
        post_code(client, california, alice_code)
        assert client.session.session_key != before

    def test_sign_out_ends_the_session(self, client, california, alice_code) -> None:
        post_code(client, california, alice_code)
        client.post(reverse("viewer:sign_out"))
        assert is_signed_out(client)


@pytest.mark.django_db
class TestThrottling:
    def test_client_is_locked_after_ten_failures(
        self, client, california, alice_code
    ) -> None:
        for _ in range(10):
            post_code(client, california, generate_code())
        response = post_code(client, california, alice_code)
        assert response.status_code == 429
        assert THROTTLED in response.content.decode()

    def test_other_clients_still_get_in(self, client, california, alice_code) -> None:
        for _ in range(10):
            post_code(client, california, generate_code(), address="192.0.2.10")
        assert (
            post_code(
                Client(), california, alice_code, address="192.0.2.11"
            ).status_code
            == 302
        )

    def test_code_is_locked_after_five_wrong_birth_dates(
        self, client, california, alice_code
    ) -> None:
        for day in range(1, 6):
            post_code(
                Client(),
                california,
                alice_code,
                birth=date(1970, 1, day),
                address=f"192.0.2.{day}",
            )
        response = post_code(Client(), california, alice_code, address="192.0.2.99")
        assert response.status_code == 429

    def test_guesses_spread_over_many_clients_lock_the_portal(
        self, settings, california, alice_code
    ) -> None:
        settings.ICODE_THROTTLE = {
            **settings.ICODE_THROTTLE,
            "icode-portal": {"limit": 20, "window_minutes": 60},
        }
        for number in range(20):
            post_code(
                Client(), california, generate_code(), address=f"198.51.100.{number}"
            )
        response = post_code(Client(), california, alice_code, address="203.0.113.7")
        assert response.status_code == 429

    def test_lock_lifts_after_the_window(self, client, california, alice_code) -> None:
        for _ in range(10):
            post_code(client, california, generate_code())
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=16)):
            assert post_code(client, california, alice_code).status_code == 302

    def test_lockout_is_logged_without_the_code(
        self, client, california, alice_code, caplog
    ) -> None:
        caplog.set_level(logging.INFO)
        guesses = [generate_code() for _ in range(11)]
        for guess in guesses:
            post_code(client, california, guess)
        assert "I-Code sign-in limit reached for bucket icode-client" in caplog.text
        assert "I-Code sign-in rejected: locked by icode-client" in caplog.text
        for guess in guesses:
            assert guess not in caplog.text
            assert guess.replace("-", "") not in caplog.text

    def test_stored_rows_hold_no_code_or_address(
        self, client, california, alice_code
    ) -> None:
        post_code(client, california, "2222-3333-4444-5555", address="192.0.2.55")
        keys = " ".join(ThrottleEvent.objects.values_list("key", flat=True))
        # Keys are hex, so look for the whole code: a short run such as
        # "2222" turns up in a hash by chance.
        assert "2222333344445555" not in keys
        assert "2222-3333-4444-5555" not in keys
        assert "192.0.2.55" not in keys
