from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from viewbox.access.actions import issue_icode
from viewbox.conftest import make_exam, make_patient
from viewbox.directory.models import ImagingGroup
from viewbox.records.models import Exam


@pytest.mark.django_db
class TestFindingThePortal:
    @pytest.fixture(autouse=True)
    def directory(self) -> None:
        call_command("load_directory", stdout=None)

    def test_start_page_asks_for_the_state(self, client) -> None:
        page = client.get("/").content.decode()
        assert "Choose the state where you had your exam." in page
        assert "California" in page
        assert "Maryland" in page

    def test_state_lists_its_groups(self, client) -> None:
        page = client.get(reverse("viewer:choose_group", args=["md"])).content.decode()
        for name in (
            "Advanced Radiology",
            "American Radiology Services",
            "Chesapeake Medical Imaging",
            "Community Radiology Associates",
        ):
            assert name in page
        assert "RadNet" not in page

    def test_directory_holds_every_california_group(self) -> None:
        assert ImagingGroup.objects.filter(state__code="CA").count() == 25

    def test_group_page_offers_patient_portal_login(self, client) -> None:
        page = client.get(
            reverse("viewer:group_portal", args=["kern-radiology"])
        ).content.decode()
        assert "Patient Portal Login" in page

    def test_login_asks_for_the_location(self, client) -> None:
        page = client.get(
            reverse("viewer:choose_location", args=["kern-radiology"])
        ).content.decode()
        assert "Bakersfield Imaging Center" in page

    def test_main_screen_offers_three_ways_in(self, client) -> None:
        page = client.get(
            reverse("viewer:sign_in_choices", args=["kern-radiology", "bakersfield"])
        ).content.decode()
        assert "Enter I-Code" in page
        assert "I have an account" in page
        assert "Create a new account" in page

    def test_unknown_state_and_group_are_not_found(self, client) -> None:
        assert (
            client.get(reverse("viewer:choose_group", args=["zz"])).status_code == 404
        )
        assert (
            client.get(
                reverse("viewer:group_portal", args=["no-such-group"])
            ).status_code
            == 404
        )

    def test_location_of_another_group_is_not_found(self, client) -> None:
        url = reverse("viewer:sign_in_choices", args=["kern-radiology", "towson"])
        assert client.get(url).status_code == 404

    def test_loading_twice_changes_nothing(self) -> None:
        before = list(ImagingGroup.objects.order_by("pk").values())
        call_command("load_directory", stdout=None)
        assert list(ImagingGroup.objects.order_by("pk").values()) == before


@pytest.fixture
def signed_in(california):
    alice = make_patient(
        california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
    )
    exam = make_exam(alice, california, "ACC1001")
    second = make_exam(
        alice, california, "ACC1002", description="MR BRAIN WITHOUT CONTRAST"
    )
    _, code = issue_icode(exam.visit)
    client = Client()
    client.post(
        reverse("viewer:icode_sign_in", args=[california.group.slug, california.slug]),
        {
            "code": code,
            "birth_date_month": 4,
            "birth_date_day": 12,
            "birth_date_year": 1980,
        },
    )
    return client, exam, second


@pytest.mark.django_db
class TestVisitSummary:
    def test_exam_list_shows_both_exams_of_the_visit(self, signed_in) -> None:
        client, _, _ = signed_in
        page = client.get(reverse("viewer:exam_list")).content.decode()
        assert "CT CHEST WITHOUT CONTRAST" in page
        assert "MR BRAIN WITHOUT CONTRAST" in page

    def test_summary_shows_every_fact(self, signed_in) -> None:
        client, exam, _ = signed_in
        page = client.get(
            reverse("viewer:exam_summary", args=[exam.public_id])
        ).content.decode()
        for text in (
            "CT CHEST WITHOUT CONTRAST",
            "November 20, 2026, 9:00 AM PST",
            "Santa Monica Imaging Center, Santa Monica, CA",
            "Dr. Pat Example",
            "Persistent cough",
            "CT",
            "ACC1001",
            "Completed",
        ):
            assert text in page

    def test_pages_are_never_cached(self, signed_in) -> None:
        client, exam, _ = signed_in
        response = client.get(reverse("viewer:exam_summary", args=[exam.public_id]))
        assert response["Cache-Control"] == "no-store"
        assert response["Referrer-Policy"] == "no-referrer"

    def test_text_from_the_ris_is_escaped(self, signed_in) -> None:
        client, exam, _ = signed_in
        Exam.objects.filter(pk=exam.pk).update(
            description="<img src=x onerror=alert(1)>", referring_physician="<b>Dr</b>"
        )
        page = client.get(
            reverse("viewer:exam_summary", args=[exam.public_id])
        ).content.decode()
        assert "<img src=x" not in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
        assert "<b>Dr</b>" not in page


@pytest.mark.django_db
class TestSignOut:
    def test_sign_out_clears_site_data(self, signed_in) -> None:
        client, exam, _ = signed_in
        response = client.post(reverse("viewer:sign_out"))
        assert response["Clear-Site-Data"] == '"cache", "cookies", "storage"'
        page = client.get(reverse("viewer:exam_summary", args=[exam.public_id]))
        assert page.status_code == 302
        assert page["Location"] == "/?session=ended"

    def test_ended_session_is_explained(self, client) -> None:
        page = client.get("/?session=ended").content.decode()
        assert "You were signed out." in page

    def test_session_ends_twelve_hours_after_sign_in(self, signed_in) -> None:
        client, exam, _ = signed_in
        url = reverse("viewer:exam_summary", args=[exam.public_id])
        start = datetime.now(UTC)
        # Stay active every 10 minutes; the absolute limit still applies.
        for minutes in range(0, 12 * 60, 10):
            with time_machine.travel(start + timedelta(minutes=minutes)):
                assert client.get(url).status_code == 200, minutes
        with time_machine.travel(start + timedelta(hours=12, minutes=1)):
            assert client.get(url).status_code == 302

    def test_session_ends_after_fifteen_idle_minutes(self, signed_in) -> None:
        client, exam, _ = signed_in
        url = reverse("viewer:exam_summary", args=[exam.public_id])
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=15, seconds=5)):
            assert client.get(url).status_code == 302

    def test_keep_alive_extends_the_session(self, signed_in) -> None:
        client, exam, _ = signed_in
        start = datetime.now(UTC)
        with time_machine.travel(start + timedelta(minutes=14)):
            assert client.post(reverse("viewer:keep_alive")).status_code == 204
        with time_machine.travel(start + timedelta(minutes=28)):
            url = reverse("viewer:exam_summary", args=[exam.public_id])
            assert client.get(url).status_code == 200


@pytest.mark.django_db
class TestForgedRequests:
    def test_sign_in_without_csrf_token_is_refused(self, california) -> None:
        client = Client(enforce_csrf_checks=True)
        url = reverse(
            "viewer:icode_sign_in", args=[california.group.slug, california.slug]
        )
        response = client.post(url, {"code": "2222-3333-4444-5555"})
        assert response.status_code == 403

    def test_post_from_own_page_without_origin_is_accepted(self, california) -> None:
        client = Client(enforce_csrf_checks=True)
        url = reverse(
            "viewer:icode_sign_in", args=[california.group.slug, california.slug]
        )
        page = client.get(url)
        response = client.post(
            url,
            {"csrfmiddlewaretoken": page.context["csrf_token"], "code": "2222"},
            HTTP_ORIGIN="null",
            HTTP_SEC_FETCH_SITE="same-origin",
        )
        assert response.status_code == 400

    def test_post_with_null_origin_from_elsewhere_is_refused(self, california) -> None:
        client = Client(enforce_csrf_checks=True)
        url = reverse(
            "viewer:icode_sign_in", args=[california.group.slug, california.slug]
        )
        page = client.get(url)
        for site in ("cross-site", "same-site", None):
            headers = {"HTTP_SEC_FETCH_SITE": site} if site else {}
            response = client.post(
                url,
                {"csrfmiddlewaretoken": page.context["csrf_token"], "code": "2222"},
                HTTP_ORIGIN="null",
                **headers,
            )
            assert response.status_code == 403, site

    def test_same_origin_post_without_token_is_refused(self, california) -> None:
        client = Client(enforce_csrf_checks=True)
        url = reverse(
            "viewer:icode_sign_in", args=[california.group.slug, california.slug]
        )
        response = client.post(url, {"code": "2222"}, HTTP_SEC_FETCH_SITE="same-origin")
        assert response.status_code == 403

    def test_sign_out_link_only_offers_the_button(self, signed_in) -> None:
        client, exam, _ = signed_in
        page = client.get(reverse("viewer:sign_out"))
        assert page.status_code == 200
        assert '<button type="submit" class="button button--primary">Sign out' in (
            page.content.decode()
        )
        assert (
            client.get(
                reverse("viewer:exam_summary", args=[exam.public_id])
            ).status_code
            == 200
        )
