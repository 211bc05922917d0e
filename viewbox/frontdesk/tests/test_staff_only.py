import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from viewbox.access.models import ICode
from viewbox.conftest import log_in_verified_staff
from viewbox.frontdesk.tests.conftest import STAFF_PASSWORD

STAFF_PAGES = [
    ("get", "frontdesk:find_visit", []),
    ("post", "frontdesk:find_visit", []),
    ("get", "frontdesk:visit", ["VISIT"]),
    ("post", "frontdesk:print_pass", ["VISIT"]),
    ("get", "frontdesk:help_queue", []),
    ("post", "frontdesk:approve_help", [1]),
    ("post", "frontdesk:decline_help", [1]),
    ("get", "frontdesk:unmatched_images", []),
    ("post", "frontdesk:choose_exam", [1]),
    ("post", "frontdesk:attach_images", [1]),
]


def _request(client: Client, method: str, name: str, args: list, visit_id: int):
    url = reverse(name, args=[visit_id if arg == "VISIT" else arg for arg in args])
    data = {"exams": [], "name": "Fiona"} if method == "post" else None
    return getattr(client, method)(url, data)


@pytest.mark.django_db
class TestFrontDeskIsStaffOnly:
    @pytest.mark.parametrize(("method", "name", "args"), STAFF_PAGES)
    def test_anonymous_is_sent_to_log_in(self, exam, method, name, args) -> None:
        response = _request(Client(), method, name, args, exam.visit_id)
        assert response.status_code == 302
        assert response["Location"].startswith("/staff/login/?next=")

    @pytest.mark.parametrize(("method", "name", "args"), STAFF_PAGES)
    def test_patient_account_is_sent_to_log_in(self, exam, method, name, args) -> None:
        client = Client()
        client.force_login(get_user_model().objects.create_user("pat.example"))
        response = _request(client, method, name, args, exam.visit_id)
        assert response.status_code == 302
        assert response["Location"].startswith("/staff/login/")

    @pytest.mark.parametrize(("method", "name", "args"), STAFF_PAGES)
    def test_staff_without_code_is_sent_to_log_in(
        self, exam, staff_member, method, name, args
    ) -> None:
        client = Client()
        client.login(username=staff_member.username, password=STAFF_PASSWORD)
        response = _request(client, method, name, args, exam.visit_id)
        assert response.status_code == 302
        assert response["Location"].startswith("/staff/login/")

    @pytest.mark.parametrize(("method", "name", "args"), STAFF_PAGES)
    def test_staff_outside_the_front_desk_get_403(
        self, exam, method, name, args
    ) -> None:
        auditor = get_user_model().objects.create_user(
            "audrey.auditor", password=STAFF_PASSWORD, is_staff=True
        )
        auditor.groups.add(Group.objects.get(name="Auditors"))
        client = Client()
        log_in_verified_staff(client, auditor)
        response = _request(client, method, name, args, exam.visit_id)
        assert response.status_code == 403
        assert not ICode.objects.exists()

    def test_refused_print_issues_no_code(self, exam, staff_member) -> None:
        client = Client()
        client.force_login(staff_member)
        client.post(
            reverse("frontdesk:print_pass", args=[exam.visit_id]), {"exams": [exam.pk]}
        )
        assert not ICode.objects.exists()

    def test_verified_staff_reach_the_front_desk(self, staff_client) -> None:
        response = staff_client.get(reverse("frontdesk:find_visit"))
        assert response.status_code == 200
        assert response["Cache-Control"] == "no-store"

    def test_admin_index_links_to_the_front_desk(self, staff_client) -> None:
        response = staff_client.get("/staff/")
        assert reverse("frontdesk:help_queue").encode() in response.content
