import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from viewbox.audit.models import AuditEvent
from viewbox.frontdesk import totp
from viewbox.frontdesk.models import StaffDevice

PASSWORD = "a long staff passphrase"
NOW = datetime(2026, 12, 1, 15, 0, 10, tzinfo=UTC)


@pytest.fixture
def frozen() -> Iterator[Any]:
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def staff_user() -> User:
    return get_user_model().objects.create_user(
        "front.desk", password=PASSWORD, is_staff=True
    )


@pytest.fixture
def device(staff_user: User) -> StaffDevice:
    return StaffDevice.objects.create(
        user=staff_user,
        secret=totp.generate_secret(),
        created_at=timezone.now(),
        confirmed_at=timezone.now(),
    )


def current_code(device: StaffDevice, offset: int = 0) -> str:
    step = totp.time_step(timezone.now().timestamp()) + offset
    return totp.code_at_step(device.secret, step)


def log_in(client: Client, password: str, address: str = "127.0.0.1"):
    return client.post(
        "/staff/login/",
        {"username": "front.desk", "password": password},
        REMOTE_ADDR=address,
    )


def send_code(client: Client, code: str, path: str = "/staff/login/code/"):
    return client.post(path, {"code": code}, REMOTE_ADDR="127.0.0.1")


@pytest.mark.django_db
class TestPasswordStep:
    def test_staff_user_is_locked_after_five_failures(self, staff_user) -> None:
        for number in range(5):
            log_in(Client(), "wrong", address=f"192.0.2.{number}")
        response = log_in(Client(), PASSWORD, address="192.0.2.100")
        assert response.status_code == 429
        assert b"Too many failed log-in attempts" in response.content

    def test_failures_are_logged_and_audited(self, staff_user, caplog) -> None:
        caplog.set_level(logging.INFO)
        log_in(Client(), "wrong")
        assert "Staff log-in failed" in caplog.text
        assert "front.desk" not in caplog.text
        event = AuditEvent.objects.get(action="staff.log_in")
        assert event.outcome == "failure"

    def test_non_staff_user_is_rejected(self) -> None:
        get_user_model().objects.create_user("front.desk", password=PASSWORD)
        response = log_in(Client(), PASSWORD)
        assert response.status_code == 200
        assert b"staff account" in response.content

    def test_right_password_alone_opens_nothing(self, staff_user, device) -> None:
        client = Client()
        response = log_in(client, PASSWORD)
        assert response.status_code == 302
        assert response["Location"] == "/staff/login/code/"
        admin = client.get("/staff/")
        assert admin.status_code == 302
        assert admin["Location"].startswith("/staff/login/")
        assert "_auth_user_id" not in client.session


@pytest.mark.django_db
class TestCodeStep:
    def test_code_step_without_password_redirects(self, device) -> None:
        response = send_code(Client(), "123456")
        assert response.status_code == 302
        assert response["Location"] == "/staff/login/"

    def test_wrong_code_is_rejected(self, device, frozen) -> None:
        client = Client()
        log_in(client, PASSWORD)
        wrong = str((int(current_code(device)) + 1) % 1_000_000).zfill(6)
        response = send_code(client, wrong)
        assert response.status_code == 400
        assert b"The code is not right or was already used" in response.content
        assert client.get("/staff/").status_code == 302
        event = AuditEvent.objects.get(action="staff.log_in")
        assert event.outcome == "failure"
        assert event.actor_id == str(device.user_id)

    def test_used_code_is_rejected_again(self, device, frozen) -> None:
        first = Client()
        log_in(first, PASSWORD)
        code = current_code(device)
        assert send_code(first, code).status_code == 302

        second = Client()
        log_in(second, PASSWORD)
        response = send_code(second, code)
        assert response.status_code == 400
        assert second.get("/staff/").status_code == 302

    def test_earlier_step_after_later_is_rejected(self, device, frozen) -> None:
        first = Client()
        log_in(first, PASSWORD)
        assert send_code(first, current_code(device, offset=1)).status_code == 302
        second = Client()
        log_in(second, PASSWORD)
        assert send_code(second, current_code(device)).status_code == 400

    def test_password_step_expires_after_five_minutes(self, device, frozen) -> None:
        client = Client()
        log_in(client, PASSWORD)
        frozen.shift(timedelta(minutes=5, seconds=1))
        response = send_code(client, current_code(device))
        assert response.status_code == 302
        assert response["Location"] == "/staff/login/"

    def test_wrong_codes_lock_the_staff_member(self, device, frozen) -> None:
        client = Client()
        log_in(client, PASSWORD)
        for _ in range(5):
            send_code(client, "000000")
        response = send_code(client, current_code(device))
        assert response.status_code == 429

    def test_page_asked_for_opens_after_the_code(self, device, frozen) -> None:
        client = Client()
        client.post(
            "/staff/login/?next=/staff/frontdesk/",
            {"username": "front.desk", "password": PASSWORD},
        )
        response = send_code(client, current_code(device))
        assert response["Location"] == "/staff/frontdesk/"

    def test_outside_page_is_not_followed(self, device, frozen) -> None:
        client = Client()
        client.post(
            "/staff/login/",
            {
                "username": "front.desk",
                "password": PASSWORD,
                "next": "https://attacker.example/",
            },
        )
        response = send_code(client, current_code(device))
        assert response["Location"] == "/staff/"

    def test_logged_in_staff_skip_the_log_in_page(self, device, frozen) -> None:
        client = Client()
        log_in(client, PASSWORD)
        send_code(client, current_code(device))
        response = client.get("/staff/login/?next=/staff/frontdesk/")
        assert response["Location"] == "/staff/frontdesk/"

    def test_right_code_logs_in(self, device, frozen) -> None:
        client = Client()
        log_in(client, PASSWORD)
        response = send_code(client, current_code(device, offset=-1))
        assert response.status_code == 302
        assert response["Location"] == "/staff/"
        assert client.get("/staff/").status_code == 200
        event = AuditEvent.objects.get(action="staff.log_in")
        assert event.outcome == "success"
        assert event.actor_kind == "staff"


@pytest.mark.django_db
class TestStaffWithoutDevice:
    def test_logged_in_staff_without_code_cannot_reach_admin(self, staff_user) -> None:
        client = Client()
        client.force_login(staff_user)
        response = client.get("/staff/")
        assert response.status_code == 302
        assert response["Location"].startswith("/staff/login/")

    def test_password_leads_to_enrolment(self, staff_user) -> None:
        client = Client()
        response = log_in(client, PASSWORD)
        assert response["Location"] == "/staff/login/enrol/"
        assert client.get("/staff/").status_code == 302

    def test_enrolment_shows_qr_code_and_key(self, staff_user) -> None:
        client = Client()
        log_in(client, PASSWORD)
        response = client.get("/staff/login/enrol/")
        assert response.status_code == 200
        device = StaffDevice.objects.get(user=staff_user)
        assert device.confirmed_at is None
        shown = response.content.decode()
        assert 'src="data:image/svg+xml;charset=utf-8,%3Csvg%20xmlns' in shown
        assert device.secret[:4] + " " + device.secret[4:8] in shown
        assert "<script>" not in shown.split("<body", 1)[1].split("</body>")[0]
        assert response["Cache-Control"] == "no-store"

    def test_wrong_first_code_does_not_enrol(self, staff_user, frozen) -> None:
        client = Client()
        log_in(client, PASSWORD)
        client.get("/staff/login/enrol/")
        response = send_code(client, "000000", "/staff/login/enrol/")
        assert response.status_code == 400
        assert StaffDevice.objects.get(user=staff_user).confirmed_at is None
        assert client.get("/staff/").status_code == 302

    def test_right_first_code_enrols_and_logs_in(self, staff_user, frozen) -> None:
        client = Client()
        log_in(client, PASSWORD)
        client.get("/staff/login/enrol/")
        device = StaffDevice.objects.get(user=staff_user)
        response = send_code(client, current_code(device), "/staff/login/enrol/")
        assert response.status_code == 302
        assert client.get("/staff/").status_code == 200
        device.refresh_from_db()
        assert device.confirmed_at == NOW
        assert AuditEvent.objects.get(action="staff.totp_enrol").outcome == "success"

    def test_enrolled_staff_cannot_enrol_again(self, device) -> None:
        client = Client()
        log_in(client, PASSWORD)
        response = client.get("/staff/login/enrol/")
        assert response["Location"] == "/staff/login/code/"


@pytest.mark.django_db
class TestResetCommand:
    def test_reset_removes_the_device(self, device, capsys) -> None:
        call_command("reset_staff_totp", "front.desk")
        assert not StaffDevice.objects.exists()
        assert "Removed the authenticator of front.desk" in capsys.readouterr().out
        client = Client()
        assert log_in(client, PASSWORD)["Location"] == "/staff/login/enrol/"


@pytest.mark.django_db
class TestStaffPasswords:
    def test_eleven_characters_are_too_short_for_staff(self, staff_user) -> None:
        with pytest.raises(ValidationError) as raised:
            validate_password("kq8#vbz2mwp", user=staff_user)
        assert "A staff password needs at least 12 characters." in raised.value.messages

    def test_eleven_characters_are_enough_for_patients(self) -> None:
        patient = get_user_model().objects.create_user("pat.example")
        validate_password("kq8#vbz2mwp", user=patient)
