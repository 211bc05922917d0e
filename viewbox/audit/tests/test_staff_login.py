import logging

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from viewbox.audit.models import AuditEvent

PASSWORD = "a long staff passphrase"


@pytest.fixture
def staff_user():
    return get_user_model().objects.create_user(
        "front.desk", password=PASSWORD, is_staff=True
    )


def log_in(client: Client, password: str, address: str = "127.0.0.1"):
    return client.post(
        "/staff/login/",
        {"username": "front.desk", "password": password},
        REMOTE_ADDR=address,
    )


@pytest.mark.django_db
class TestStaffLogIn:
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

    def test_right_password_logs_in(self, staff_user) -> None:
        client = Client()
        response = log_in(client, PASSWORD)
        assert response.status_code == 302
        assert client.get("/staff/").status_code == 200
        assert AuditEvent.objects.get(action="staff.log_in").outcome == "success"
