import re
import time

import pytest
from django.core.management import call_command
from django.test import Client

from viewbox.frontdesk import totp


@pytest.mark.django_db
class TestDemoStaff:
    def test_printed_password_and_key_log_in(self, capsys) -> None:
        call_command("create_demo_staff")
        printed = capsys.readouterr().out
        password = re.search(r"Password:\s+(\S+)", printed)[1]
        key = re.search(r"TOTP key:\s+(\S+)", printed)[1]
        client = Client()
        response = client.post(
            "/staff/login/", {"username": "frontdesk", "password": password}
        )
        assert response["Location"] == "/staff/login/code/"
        code = totp.code_at_step(key, totp.time_step(time.time()))
        response = client.post("/staff/login/code/", {"code": code})
        assert response.status_code == 302
        assert client.get("/staff/frontdesk/").status_code == 200
