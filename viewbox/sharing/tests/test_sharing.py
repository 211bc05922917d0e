"""Share links: making them, opening them, and what a recipient may reach."""

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.messages.storage.fallback import FallbackStorage
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import transaction
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from viewbox.access.models import ICode
from viewbox.accounts.models import Account
from viewbox.audit.models import AuditEvent
from viewbox.conftest import add_report, make_exam, make_patient, sign_in_with_icode
from viewbox.downloads.models import Package
from viewbox.downloads.tests.test_download_views import import_ct
from viewbox.ingest.patient_merge import merge_patients
from viewbox.records.models import Exam, Instance
from viewbox.sharing.actions import hash_token
from viewbox.sharing.models import ShareAccess, ShareLink

PASSWORD = "maple lantern harbor"
NOW = datetime(2026, 12, 4, 17, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def run_tasks_at_once(settings: Any) -> None:
    settings.TASKS = {
        "default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}
    }


@pytest.fixture
def frozen() -> Any:
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def records(maryland, tmp_path, frozen) -> dict[str, Any]:
    """Barbara with two visits, and Olive, another patient of the group."""
    barbara = make_patient(
        maryland, "DEMO-2001", "Barbara", "Sample", date(1975, 9, 30)
    )
    shared = make_exam(barbara, maryland, "ACC1", description="MAMMO SCREENING")
    kept = make_exam(
        barbara, maryland, "ACC2", day=date(2026, 10, 1), description="MR KNEE"
    )
    olive = make_patient(maryland, "DEMO-9001", "Olive", "Other", date(1960, 1, 1))
    others = make_exam(olive, maryland, "ACC9")
    for exam in (shared, kept, others):
        import_ct(exam, tmp_path)
    add_report(shared, "F", "IMPRESSION: Benign.", NOW - timedelta(days=2))
    return {"barbara": barbara, "shared": shared, "kept": kept, "others": others}


def account_client(patient, location) -> Client:
    user = get_user_model().objects.create_user(
        "barbara.sample", password="a long passphrase", email="barbara@example.com"
    )
    Account.objects.create(user=user, patient=patient)
    client = Client()
    response = client.post(
        reverse("accounts:log_in", args=[location.group.slug, location.slug]),
        {"user_id": "barbara.sample", "password": "a long passphrase"},
    )
    assert response.status_code == 302
    return client


def share_form(chosen: list[Exam], **changes: Any) -> dict[str, Any]:
    data = {
        "exams": [str(exam.public_id) for exam in chosen],
        "nickname": "For Dr. Lee",
        "password": PASSWORD,
        "expires_on": "2026-12-31",
        "permission": "view",
        "acknowledge_phi": "on",
    }
    data.update(changes)
    data.setdefault("password_again", data["password"])
    return {key: value for key, value in data.items() if value is not None}


def create_link(client: Client, exams: list[Exam], **changes: Any) -> str:
    """Create a link as the signed-in patient; return its URL as shown once."""
    response = client.post(reverse("sharing:create"), share_form(exams, **changes))
    assert response.status_code == 302, response.content.decode()
    page = client.get(response["Location"])
    match = re.search(r'value="(http://testserver/s/[^"]+)"', page.content.decode())
    assert match, "the new link is shown"
    return match.group(1)


def open_as_recipient(url: str, password: str = PASSWORD) -> Client:
    recipient = Client()
    response = recipient.get(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("sharing:password")
    response = recipient.post(reverse("sharing:password"), {"password": password})
    assert response.status_code == 302
    assert response["Location"] == reverse("viewer:exam_list")
    return recipient


@pytest.fixture
def patient(records, maryland) -> Client:
    return account_client(records["barbara"], maryland)


def exam_urls(exam: Exam) -> list[str]:
    instance = Instance.objects.filter(series__study__exam=exam).first()
    assert instance is not None
    args = [exam.public_id, instance.public_id]
    return [
        reverse("viewer:exam_summary", args=[exam.public_id]),
        reverse("viewer:exam_report", args=[exam.public_id]),
        reverse("viewer:exam_report_print", args=[exam.public_id]),
        reverse("viewer:exam_images", args=[exam.public_id]),
        reverse("viewer:image_view", args=args),
        reverse("viewer:image_jpeg", args=[*args, 1, 256]),
        reverse("downloads:request", args=[exam.public_id]),
    ]


def export_urls(exam: Exam, package: Package) -> list[str]:
    args = [exam.public_id, package.public_id]
    return [
        reverse("downloads:request", args=[exam.public_id]),
        reverse("downloads:status", args=args),
        reverse("downloads:progress", args=args),
        reverse("downloads:file", args=args),
    ]


def ready_package(client: Client, exam: Exam) -> Package:
    response = client.post(
        reverse("downloads:request", args=[exam.public_id]),
        {"format": "zip", "acknowledge_phi": "on"},
    )
    assert response.status_code == 302
    package = Package.objects.get(exam=exam, format="zip")
    assert package.status == Package.Status.READY
    return package


@pytest.mark.django_db(transaction=True)
class TestRecipientScope:
    def test_ids_outside_the_share_answer_404_on_every_url(
        self, patient, records
    ) -> None:
        url = create_link(patient, [records["shared"]], permission="download")
        recipient = open_as_recipient(url)
        for exam in (records["kept"], records["others"]):
            for path in exam_urls(exam):
                assert recipient.get(path).status_code == 404, path
        # Packages of the patient's other exam, made by the patient.
        package = ready_package(patient, records["kept"])
        for path in export_urls(records["kept"], package):
            assert recipient.get(path).status_code == 404, path

    def test_exam_list_shows_only_shared_exams(self, patient, records) -> None:
        url = create_link(patient, [records["shared"], records["kept"]])
        recipient = open_as_recipient(url)
        page = recipient.get(
            reverse("viewer:exam_summary", args=[records["shared"].public_id])
        )
        html = page.content.decode()
        assert "MAMMO SCREENING" in html
        assert "MR KNEE" in html
        assert "Barbara Sample shared these exams with you." in html
        assert records["others"].description not in html

    def test_recipients_cannot_reach_sharing_pages_or_other_links(
        self, patient, records
    ) -> None:
        url = create_link(patient, [records["shared"]])
        create_link(patient, [records["kept"]], nickname="Second link")
        recipient = open_as_recipient(url)
        for link in ShareLink.objects.all():
            for name in ("detail", "created", "revoke"):
                path = reverse(f"sharing:{name}", args=[link.public_id])
                assert recipient.get(path).status_code == 404, path
        assert recipient.get(reverse("sharing:links")).status_code == 404
        assert recipient.get(reverse("sharing:create")).status_code == 404
        response = recipient.post(
            reverse("sharing:create"), share_form([records["shared"]])
        )
        assert response.status_code == 404
        assert ShareLink.objects.count() == 2
        page = recipient.get(
            reverse("viewer:exam_summary", args=[records["shared"].public_id])
        )
        assert "Second link" not in page.content.decode()
        assert reverse("sharing:links") not in page.content.decode()

    def test_held_report_stays_held_for_the_recipient(self, patient, records) -> None:
        exam = records["kept"]
        add_report(exam, "P", "PRELIMINARY: Tear suspected.", NOW - timedelta(hours=1))
        url = create_link(patient, [exam])
        recipient = open_as_recipient(url)
        page = recipient.get(reverse("viewer:exam_report", args=[exam.public_id]))
        assert "Tear suspected" not in page.content.decode()
        print_url = reverse("viewer:exam_report_print", args=[exam.public_id])
        assert recipient.get(print_url).status_code == 404

    def test_released_report_shows_to_the_recipient(self, patient, records) -> None:
        url = create_link(patient, [records["shared"]])
        recipient = open_as_recipient(url)
        page = recipient.get(
            reverse("viewer:exam_report", args=[records["shared"].public_id])
        )
        assert "IMPRESSION: Benign." in page.content.decode()


@pytest.mark.django_db(transaction=True)
class TestViewOnly:
    def test_every_export_path_refuses_a_view_only_recipient(
        self, patient, records
    ) -> None:
        exam = records["shared"]
        package = ready_package(patient, exam)
        url = create_link(patient, [exam], permission="view")
        recipient = open_as_recipient(url)
        for path in export_urls(exam, package):
            assert recipient.get(path).status_code == 404, path
        response = recipient.post(
            reverse("downloads:request", args=[exam.public_id]),
            {"format": "iso", "acknowledge_phi": "on"},
        )
        assert response.status_code == 404
        assert not Package.objects.filter(format="iso").exists()

    def test_viewer_shows_no_download_button_and_no_ready_icon(
        self, patient, records
    ) -> None:
        exam = records["shared"]
        ready_package(patient, exam)
        url = create_link(patient, [exam], permission="view")
        recipient = open_as_recipient(url)
        html = recipient.get(
            reverse("viewer:exam_images", args=[exam.public_id])
        ).content.decode()
        assert reverse("downloads:request", args=[exam.public_id]) not in html
        assert "Download ready" not in html
        assert "downloading is not allowed" in html

    def test_images_come_only_in_the_sizes_the_viewer_shows(
        self, patient, records
    ) -> None:
        exam = records["shared"]
        instance = Instance.objects.filter(series__study__exam=exam).first()
        assert instance is not None
        url = create_link(patient, [exam], permission="view")
        recipient = open_as_recipient(url)
        args = [exam.public_id, instance.public_id, 1]
        assert (
            recipient.get(reverse("viewer:image_jpeg", args=[*args, 256])).status_code
            == 200
        )
        for edge in (4096, 8192, 0, 1):
            path = reverse("viewer:image_jpeg", args=[*args, edge])
            assert recipient.get(path).status_code == 404, path

    def test_every_exam_url_is_classified_as_a_view_or_an_export(self) -> None:
        """A new URL under an exam must be added here, and to the export tests
        above if it hands out files, before this test passes."""
        known = {
            "viewer:exam_summary",
            "viewer:exam_report",
            "viewer:exam_report_print",
            "viewer:exam_images",
            "viewer:image_view",
            "viewer:image_jpeg",
            "downloads:request",
            "downloads:status",
            "downloads:progress",
            "downloads:file",
        }
        found = set()

        def walk(patterns: list[Any], namespace: str = "") -> None:
            for pattern in patterns:
                if isinstance(pattern, URLResolver):
                    inner = pattern.namespace or ""
                    walk(pattern.url_patterns, inner or namespace)
                elif isinstance(pattern, URLPattern) and "exam_id" in str(
                    pattern.pattern
                ):
                    found.add(f"{namespace}:{pattern.name}")

        walk(get_resolver().url_patterns)
        assert found == known

    def test_download_link_lets_the_recipient_download_like_the_patient(
        self, patient, records
    ) -> None:
        exam = records["shared"]
        url = create_link(patient, [exam], permission="download")
        recipient = open_as_recipient(url)
        html = recipient.get(
            reverse("viewer:exam_images", args=[exam.public_id])
        ).content.decode()
        assert reverse("downloads:request", args=[exam.public_id]) in html
        # The same rule as for patients: no download without the tick.
        refused = recipient.post(
            reverse("downloads:request", args=[exam.public_id]), {"format": "zip"}
        )
        assert refused.status_code == 400
        package = ready_package(recipient, exam)
        file_url = reverse("downloads:file", args=[exam.public_id, package.public_id])
        response = recipient.get(file_url)
        assert response.status_code == 200
        assert b"".join(response.streaming_content)[:2] == b"PK"
        assert (
            AuditEvent.objects.filter(
                action="download.file", actor_kind="share"
            ).exists()
            or AuditEvent.objects.filter(actor_kind="share", exam_id=exam.pk).exists()
        )


@pytest.mark.django_db(transaction=True)
class TestLinkLifetime:
    def test_expired_link_shows_a_clear_page_and_no_data(
        self, patient, records, frozen
    ) -> None:
        url = create_link(patient, [records["shared"]], expires_on="2026-12-05")
        frozen.move_to(datetime(2026, 12, 6, 5, 1, tzinfo=UTC))  # 00:01 in Maryland
        recipient = Client()
        recipient.get(url)
        response = recipient.get(reverse("sharing:password"))
        assert response.status_code == 410
        html = response.content.decode()
        assert "This link no longer works" in html
        assert "MAMMO" not in html
        assert "Barbara" not in html
        response = recipient.post(reverse("sharing:password"), {"password": PASSWORD})
        assert response.status_code == 410

    def test_link_works_through_the_whole_last_day(
        self, patient, records, frozen
    ) -> None:
        url = create_link(patient, [records["shared"]], expires_on="2026-12-05")
        frozen.move_to(datetime(2026, 12, 6, 4, 59, tzinfo=UTC))  # 23:59 in Maryland
        open_as_recipient(url)

    def test_session_started_before_expiry_ends_with_the_link(
        self, patient, records, frozen
    ) -> None:
        exam = records["shared"]
        # Ten minutes before the end of the day in Maryland.
        frozen.move_to(datetime(2026, 12, 5, 4, 50, tzinfo=UTC))
        patient = account_client_again(patient, records)
        url = create_link(patient, [exam], expires_on="2026-12-04")
        recipient = open_as_recipient(url)
        summary = reverse("viewer:exam_summary", args=[exam.public_id])
        assert recipient.get(summary).status_code == 200
        frozen.move_to(datetime(2026, 12, 5, 5, 0, 1, tzinfo=UTC))
        response = recipient.get(summary)
        assert response["Location"] == reverse("sharing:ended")
        page = recipient.get(response["Location"])
        assert page.status_code == 410
        assert "The link has expired." in page.content.decode()
        image = Instance.objects.filter(series__study__exam=exam).first()
        assert image is not None
        jpeg = reverse(
            "viewer:image_jpeg", args=[exam.public_id, image.public_id, 1, 256]
        )
        assert recipient.get(jpeg).status_code == 302

    def test_revoked_link_ends_a_running_session_at_once(
        self, patient, records
    ) -> None:
        exam = records["shared"]
        url = create_link(patient, [exam])
        recipient = open_as_recipient(url)
        link = ShareLink.objects.get()
        response = patient.post(reverse("sharing:revoke", args=[link.public_id]))
        assert response.status_code == 302
        summary = reverse("viewer:exam_summary", args=[exam.public_id])
        response = recipient.get(summary)
        assert response["Location"] == reverse("sharing:ended")
        assert "turned it off" in recipient.get(response["Location"]).content.decode()
        # Opening the link again shows the same page.
        again = Client()
        again.get(url)
        assert again.get(reverse("sharing:password")).status_code == 410

    def test_link_made_with_an_icode_stops_when_the_code_is_revoked(
        self, records
    ) -> None:
        client = Client()
        sign_in_with_icode(client, records["shared"])
        url = create_link(client, [records["shared"]])
        ICode.objects.update(revoked_at=timezone.now())
        recipient = Client()
        recipient.get(url)
        assert recipient.get(reverse("sharing:password")).status_code == 410

    def test_link_made_with_an_icode_stops_when_the_code_expires(self, records) -> None:
        client = Client()
        sign_in_with_icode(client, records["shared"])
        url = create_link(client, [records["shared"]], expires_on="2099-01-01")
        ICode.objects.update(expires_at=timezone.now())
        recipient = Client()
        recipient.get(url)
        assert recipient.get(reverse("sharing:password")).status_code == 410
        # The patient's account lists the link as stopped.
        listing = account_client(records["barbara"], records["shared"].visit.location)
        page = listing.get(reverse("sharing:links")).content.decode()
        assert "Stopped: the I-Code or account that made it no longer works" in page
        # Front desk reactivates the code: its links work again.
        ICode.objects.update(expires_at=timezone.now() + timedelta(days=90))
        open_as_recipient(url)

    def test_link_made_in_an_account_stops_when_it_is_disabled(
        self, patient, records
    ) -> None:
        url = create_link(patient, [records["shared"]])
        recipient = open_as_recipient(url)
        get_user_model().objects.update(is_active=False)
        summary = reverse("viewer:exam_summary", args=[records["shared"].public_id])
        assert recipient.get(summary)["Location"] == reverse("sharing:ended")

    def test_patient_changes_the_expiry_of_an_expired_link(
        self, patient, records, frozen
    ) -> None:
        url = create_link(patient, [records["shared"]], expires_on="2026-12-04")
        link = ShareLink.objects.get()
        frozen.move_to(datetime(2026, 12, 10, 12, tzinfo=UTC))
        patient = account_client_again(patient, records)
        change = reverse("sharing:change_expiry", args=[link.public_id])
        refused = patient.post(change, {"expires_on": "2026-12-09"})
        assert refused.status_code == 400
        assert "The date has passed" in refused.content.decode()
        assert patient.post(change, {"expires_on": "2027-01-31"}).status_code == 302
        link.refresh_from_db()
        assert link.expires_on == date(2027, 1, 31)
        open_as_recipient(url)


def account_client_again(client: Client, records: dict[str, Any]) -> Client:
    """Log the patient in again after a time jump ended the session."""
    fresh = Client()
    location = records["shared"].visit.location
    response = fresh.post(
        reverse("accounts:log_in", args=[location.group.slug, location.slug]),
        {"user_id": "barbara.sample", "password": "a long passphrase"},
    )
    assert response.status_code == 302
    return fresh


@pytest.mark.django_db(transaction=True)
class TestPasswords:
    def test_wrong_password_is_refused_and_written_down(self, patient, records) -> None:
        url = create_link(patient, [records["shared"]])
        recipient = Client()
        recipient.get(url)
        response = recipient.post(reverse("sharing:password"), {"password": "guess"})
        assert response.status_code == 400
        assert "The password is not right." in response.content.decode()
        assert list(ShareAccess.objects.values_list("outcome", flat=True)) == ["wrong"]
        summary = reverse("viewer:exam_summary", args=[records["shared"].public_id])
        assert recipient.get(summary).status_code == 302

    def test_ten_wrong_passwords_pause_the_link_for_fifteen_minutes(
        self, patient, records, frozen, settings
    ) -> None:
        settings.SHARE_THROTTLE = {
            "share-client": {"limit": 1000, "window_minutes": 60}
        }
        url = create_link(patient, [records["shared"]])
        recipient = Client()
        recipient.get(url)
        for _ in range(10):
            recipient.post(reverse("sharing:password"), {"password": "guess"})
        response = recipient.post(reverse("sharing:password"), {"password": PASSWORD})
        assert response.status_code == 429
        assert "try again in 15 minutes" in response.content.decode()
        frozen.shift(timedelta(minutes=15, seconds=1))
        # The idle session is gone by now; the recipient opens the link again.
        recipient.get(url)
        assert (
            recipient.post(
                reverse("sharing:password"), {"password": PASSWORD}
            ).status_code
            == 302
        )
        outcomes = list(
            ShareAccess.objects.order_by("at", "pk").values_list("outcome", flat=True)
        )
        assert outcomes == ["wrong"] * 10 + ["paused", "right"]

    def test_tenth_wrong_password_says_the_link_is_paused(
        self, patient, records
    ) -> None:
        url = create_link(patient, [records["shared"]])
        recipient = Client()
        recipient.get(url)
        for _ in range(9):
            recipient.post(reverse("sharing:password"), {"password": "guess"})
        response = recipient.post(reverse("sharing:password"), {"password": "guess"})
        assert response.status_code == 429
        assert "The link is paused" in response.content.decode()
        # The patient may lift the pause at once.
        link = ShareLink.objects.get()
        detail = patient.get(reverse("sharing:detail", args=[link.public_id]))
        assert "Unlock link" in detail.content.decode()
        patient.post(reverse("sharing:unlock", args=[link.public_id]))
        response = recipient.post(reverse("sharing:password"), {"password": PASSWORD})
        assert response.status_code == 302

    def test_hundred_wrong_passwords_lock_until_the_patient_unlocks(
        self, patient, records, settings
    ) -> None:
        settings.SHARE_THROTTLE = {
            "share-client": {"limit": 1000, "window_minutes": 60}
        }
        settings.SHARE_PAUSE_MINUTES = 0
        url = create_link(patient, [records["shared"]])
        link = ShareLink.objects.get()
        recipient = Client()
        recipient.get(url)
        for _ in range(100):
            recipient.post(reverse("sharing:password"), {"password": "guess"})
        link.refresh_from_db()
        assert link.locked_at is not None
        response = recipient.post(reverse("sharing:password"), {"password": PASSWORD})
        assert response.status_code == 423
        detail = patient.get(reverse("sharing:detail", args=[link.public_id]))
        assert "Unlock link" in detail.content.decode()
        patient.post(reverse("sharing:unlock", args=[link.public_id]))
        assert (
            recipient.post(
                reverse("sharing:password"), {"password": PASSWORD}
            ).status_code
            == 302
        )

    def test_one_client_guessing_across_links_is_stopped(
        self, patient, records, settings
    ) -> None:
        settings.SHARE_THROTTLE = {"share-client": {"limit": 3, "window_minutes": 60}}
        guesser = Client()
        for number in range(3):
            guesser.get(reverse("sharing:open", args=[f"made-up-token-{number}"]))
            assert guesser.get(reverse("sharing:password")).status_code == 404
        url = create_link(patient, [records["shared"]])
        guesser.get(url)
        assert guesser.get(reverse("sharing:password")).status_code == 429

    def test_link_passwords_follow_the_account_rules(self, patient, records) -> None:
        for weak in ("short", "password123", "12345678901", "barbarasample"):
            response = patient.post(
                reverse("sharing:create"),
                share_form([records["shared"]], password=weak),
            )
            assert response.status_code == 400, weak
        assert not ShareLink.objects.exists()

    def test_password_is_stored_as_a_hash(self, patient, records) -> None:
        create_link(patient, [records["shared"]])
        link = ShareLink.objects.get()
        assert link.password_hash.startswith("argon2$")
        assert PASSWORD not in link.password_hash


@pytest.mark.django_db(transaction=True)
class TestToken:
    def test_token_is_random_long_and_stored_only_as_a_hash(
        self, patient, records
    ) -> None:
        url = create_link(patient, [records["shared"]])
        token = url.rstrip("/").rsplit("/", 1)[1]
        assert len(token) >= 22  # 128 bits in base64
        link = ShareLink.objects.get()
        assert link.token_hash == hash_token(token)
        assert token not in link.token_hash
        for session in Session.objects.all():
            assert token not in str(session.get_decoded())

    def test_link_is_shown_once(self, patient, records) -> None:
        create_link(patient, [records["shared"]])
        link = ShareLink.objects.get()
        again = patient.get(reverse("sharing:created", args=[link.public_id]))
        assert "/s/" not in again.content.decode()
        assert "shown only once" in again.content.decode()

    def test_token_leaves_the_address_bar_at_once(self, patient, records) -> None:
        url = create_link(patient, [records["shared"]])
        recipient = Client()
        response = recipient.get(url)
        assert response.status_code == 302
        assert "/s/" not in response["Location"]
        assert response["Referrer-Policy"] == "no-referrer"
        page = recipient.get(response["Location"])
        assert page["Referrer-Policy"] == "no-referrer"
        assert page["Cache-Control"] == "no-store"

    def test_unknown_token_shows_not_found(self, db) -> None:
        client = Client()
        client.get(reverse("sharing:open", args=["x" * 32]))
        response = client.get(reverse("sharing:password"))
        assert response.status_code == 404
        assert "We could not find this link." in response.content.decode()

    def test_password_page_without_a_link_explains_what_to_do(self, db) -> None:
        response = Client().get(reverse("sharing:password"))
        assert response.status_code == 200
        assert "open the link you were sent" in response.content.decode()


@pytest.mark.django_db(transaction=True)
class TestCreateForm:
    def test_past_dates_empty_selections_and_missing_ticks_are_refused(
        self, patient, records
    ) -> None:
        cases = {
            "The date has passed": {"expires_on": "2026-12-03"},
            "Choose at least one exam to share.": {"exams": []},
            "Check the box to confirm that you understand.": {"acknowledge_phi": None},
            "Enter a nickname for the link.": {"nickname": "  "},
            "Enter a date like 2027-03-31.": {"expires_on": "31 Dec"},
            "The two passwords are not the same.": {"password_again": "maple lantern"},
        }
        for message, change in cases.items():
            response = patient.post(
                reverse("sharing:create"), share_form([records["shared"]], **change)
            )
            assert response.status_code == 400, message
            assert message in response.content.decode(), message
        assert not ShareLink.objects.exists()

    def test_far_future_date_is_accepted(self, patient, records) -> None:
        create_link(patient, [records["shared"]], expires_on="9999-12-31")
        assert ShareLink.objects.get().expires_on == date(9999, 12, 31)

    def test_exam_of_another_patient_cannot_be_forged_into_the_form(
        self, patient, records
    ) -> None:
        response = patient.post(
            reverse("sharing:create"),
            share_form([records["shared"], records["others"]]),
        )
        assert response.status_code == 400
        assert not ShareLink.objects.exists()

    def test_icode_session_shares_only_the_exams_its_code_opens(self, records) -> None:
        client = Client()
        sign_in_with_icode(client, records["shared"])
        page = client.get(reverse("sharing:create")).content.decode()
        assert "MAMMO SCREENING" in page and "MR KNEE" not in page
        response = client.post(reverse("sharing:create"), share_form([records["kept"]]))
        assert response.status_code == 400
        create_link(client, [records["shared"]])
        assert ShareLink.objects.get().icode_id is not None

    def test_create_change_revoke_and_unlock_need_the_csrf_token(
        self, records, maryland
    ) -> None:
        client = account_client(records["barbara"], maryland)
        create_link(client, [records["shared"]])
        link = ShareLink.objects.get()
        strict = Client(enforce_csrf_checks=True)
        strict.cookies = client.cookies
        posts = {
            reverse("sharing:create"): share_form([records["shared"]]),
            reverse("sharing:change_expiry", args=[link.public_id]): {
                "expires_on": "2027-01-01"
            },
            reverse("sharing:revoke", args=[link.public_id]): {},
            reverse("sharing:unlock", args=[link.public_id]): {},
        }
        for path, data in posts.items():
            response = strict.post(path, data)
            assert response.status_code == 403, path
            assert "Forbidden (403)" not in response.content.decode(), path
        link.refresh_from_db()
        assert link.revoked_at is None and link.expires_on == date(2026, 12, 31)
        assert ShareLink.objects.count() == 1


@pytest.mark.django_db(transaction=True)
class TestMySharedLinks:
    def test_list_shows_each_link_with_its_use(self, patient, records) -> None:
        url = create_link(patient, [records["shared"]], permission="download")
        recipient = Client()
        recipient.get(url)
        recipient.post(reverse("sharing:password"), {"password": "guess"})
        recipient.post(reverse("sharing:password"), {"password": PASSWORD})
        listing = patient.get(reverse("sharing:links")).content.decode()
        assert "For Dr. Lee" in listing
        assert "MAMMO SCREENING" in listing
        assert "View and download images" in listing
        assert "Not opened yet" not in listing
        link = ShareLink.objects.get()
        detail = patient.get(
            reverse("sharing:detail", args=[link.public_id])
        ).content.decode()
        assert "Wrong password" in detail and "Right password" in detail

    def test_icode_session_sees_only_links_to_its_exams(self, patient, records) -> None:
        create_link(patient, [records["kept"]], nickname="Knee for the surgeon")
        create_link(patient, [records["shared"]], nickname="Mammogram for Dr. Lee")
        client = Client()
        sign_in_with_icode(client, records["shared"])
        listing = client.get(reverse("sharing:links")).content.decode()
        assert "Knee for the surgeon" not in listing
        assert "Mammogram for Dr. Lee" in listing
        knee = ShareLink.objects.get(nickname="Knee for the surgeon")
        detail = reverse("sharing:detail", args=[knee.public_id])
        assert client.get(detail).status_code == 404
        revoke = reverse("sharing:revoke", args=[knee.public_id])
        assert client.post(revoke).status_code == 404
        knee.refresh_from_db()
        assert knee.revoked_at is None

    def test_end_date_of_account_link(self, patient, records) -> None:
        create_link(patient, [records["shared"]], expires_on="9999-12-31")
        listing = patient.get(reverse("sharing:links")).content.decode()
        assert "December 31, 9999" in listing

    def test_end_date_of_icode_link(self, records) -> None:
        # The I-Code was issued at NOW, so it ends on March 4, 2027 in Maryland.
        client = Client()
        sign_in_with_icode(client, records["shared"])
        form = share_form([records["shared"]], expires_on="9999-12-31")
        created = client.get(client.post(reverse("sharing:create"), form)["Location"])
        assert "December 31, 9999" not in created.content.decode()
        assert "works through March 4, 2027" in created.content.decode()
        create_link(client, [records["shared"]], expires_on="2027-01-15")
        listing = client.get(reverse("sharing:links")).content.decode()
        assert "December 31, 9999" not in listing
        assert "March 4, 2027" in listing
        assert "January 15, 2027" in listing
        link = ShareLink.objects.get(expires_on=date(9999, 12, 31))
        detail = client.get(reverse("sharing:detail", args=[link.public_id]))
        assert "December 31, 9999" not in detail.content.decode()
        assert "March 4, 2027" in detail.content.decode()

    def test_another_patients_links_cannot_be_reached(self, records, maryland) -> None:
        olive = Client()
        sign_in_with_icode(olive, records["others"])
        create_link(olive, [records["others"]], nickname="Olive's link")
        link = ShareLink.objects.get()
        barbara = account_client(records["barbara"], maryland)
        for name in ("detail", "created", "revoke", "unlock", "change_expiry"):
            path = reverse(f"sharing:{name}", args=[link.public_id])
            assert barbara.get(path).status_code in (404, 405), path
            response = barbara.post(path, {"expires_on": "2027-01-01"})
            assert response.status_code in (404, 405), path
        assert (
            "Olive's link" not in barbara.get(reverse("sharing:links")).content.decode()
        )
        link.refresh_from_db()
        assert link.revoked_at is None

    def test_patient_is_emailed_when_a_link_is_first_opened(
        self, patient, records, mail_catcher
    ) -> None:
        url = create_link(
            patient, [records["shared"]], notify_email="barbara@example.com"
        )
        open_as_recipient(url)
        open_as_recipient(url)
        messages = mail_catcher.messages
        assert len(messages) == 1
        body = messages[0].get_payload(decode=True).decode()
        assert "opened a link you shared" in body
        for secret in ("For Dr. Lee", "MAMMO", "Barbara", "Sample", PASSWORD):
            assert secret not in body and secret not in messages[0]["Subject"]

    def test_signing_out_ends_the_recipients_session(self, patient, records) -> None:
        url = create_link(patient, [records["shared"]])
        recipient = open_as_recipient(url)
        response = recipient.post(reverse("viewer:sign_out"))
        assert response["Location"].startswith(reverse("sharing:left"))
        summary = reverse("viewer:exam_summary", args=[records["shared"].public_id])
        assert recipient.get(summary).status_code == 302

    def test_idle_recipient_is_told_how_to_come_back(
        self, patient, records, frozen
    ) -> None:
        url = create_link(patient, [records["shared"]])
        recipient = open_as_recipient(url)
        frozen.shift(timedelta(minutes=16))
        summary = reverse("viewer:exam_summary", args=[records["shared"].public_id])
        response = recipient.get(summary)
        assert response["Location"] == reverse("sharing:left") + "?session=ended"
        page = recipient.get(response["Location"]).content.decode()
        assert "open the link you were sent" in page

    def test_opening_a_link_signs_out_a_patient_in_the_same_browser(
        self, patient, records
    ) -> None:
        url = create_link(patient, [records["shared"]])
        patient.get(url)
        patient.post(reverse("sharing:password"), {"password": PASSWORD})
        # The browser is now the recipient's: the patient's pages are gone.
        assert patient.get(reverse("sharing:links")).status_code == 404
        kept = reverse("viewer:exam_summary", args=[records["kept"].public_id])
        assert patient.get(kept).status_code == 404

    def test_share_events_are_audited_without_secrets(self, patient, records) -> None:
        url = create_link(patient, [records["shared"]])
        open_as_recipient(url)
        actions = set(AuditEvent.objects.values_list("action", flat=True))
        assert {"share.create", "share.open", "share.password"} <= actions
        for event in AuditEvent.objects.all():
            assert PASSWORD not in str(event.__dict__)


@pytest.mark.django_db(transaction=True)
class TestStaff:
    def test_staff_turn_a_link_off_from_the_admin(self, patient, records) -> None:
        url = create_link(patient, [records["shared"]], nickname="For Dr. Lee")
        link = ShareLink.objects.get()
        staff = get_user_model().objects.create_superuser("admin", password="x" * 20)
        request = RequestFactory().post(reverse("admin:sharing_sharelink_changelist"))
        request.user = staff
        request.session = SessionStore()
        request._messages = FallbackStorage(request)  # type: ignore[attr-defined]
        model_admin = admin.site._registry[ShareLink]
        model_admin.turn_off(request, ShareLink.objects.all())
        link.refresh_from_db()
        assert link.revoked_at is not None
        assert AuditEvent.objects.filter(
            action="share.revoke", actor_kind="staff"
        ).exists()
        recipient = Client()
        recipient.get(url)
        assert recipient.get(reverse("sharing:password")).status_code == 410

    def test_admin_list_shows_no_nickname(self, patient, records) -> None:
        create_link(patient, [records["shared"]], nickname="Lump in left breast")
        model_admin = admin.site._registry[ShareLink]
        assert "nickname" not in model_admin.list_display
        assert "nickname" not in model_admin.fields


@pytest.mark.django_db(transaction=True)
class TestPatientMerge:
    def test_links_follow_their_patient_into_a_merge(
        self, patient, records, maryland
    ) -> None:
        url = create_link(patient, [records["shared"]])
        surviving = make_patient(
            maryland, "DEMO-2002", "Barbara", "Sample", date(1975, 9, 30)
        )
        with transaction.atomic():
            merge_patients(
                records["barbara"], surviving, actor_kind="hl7", actor_id="1"
            )
        assert ShareLink.objects.get().patient_id == surviving.pk
        recipient = open_as_recipient(url)
        summary = reverse("viewer:exam_summary", args=[records["shared"].public_id])
        assert recipient.get(summary).status_code == 200
