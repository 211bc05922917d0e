from datetime import UTC, date, datetime

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from viewbox.access.models import ICode
from viewbox.access.scope import Requester
from viewbox.accounts.models import Account
from viewbox.audit import queries
from viewbox.audit.actions import record_event
from viewbox.audit.models import AuditEvent
from viewbox.conftest import make_exam, make_patient, sign_in_with_icode
from viewbox.records.models import Exam, Patient
from viewbox.sharing.models import ShareLink

PASSWORD = "a long patient passphrase"
ACTIVITY_URL = "/activity/"


@pytest.fixture
def rosa(maryland) -> Patient:
    return make_patient(maryland, "MRN-ROSA", "Rosa", "Testcase", date(1980, 5, 1))


@pytest.fixture
def rosa_chest(rosa, maryland) -> Exam:
    return make_exam(rosa, maryland, "ACC-R1", day=date(2026, 11, 20))


@pytest.fixture
def rosa_knee(rosa, maryland) -> Exam:
    return make_exam(
        rosa, maryland, "ACC-R2", day=date(2026, 10, 2), description="MRI KNEE"
    )


@pytest.fixture
def other_exam(maryland) -> Exam:
    other = make_patient(maryland, "MRN-OTTO", "Otto", "Example", date(1970, 1, 1))
    return make_exam(other, maryland, "ACC-O1", description="XR HAND")


@pytest.fixture
def rosa_account(rosa) -> Account:
    user = get_user_model().objects.create_user("rosa.testcase", password=PASSWORD)
    return Account.objects.create(user=user, patient=rosa)


def log_in(client: Client, location, user_id: str = "rosa.testcase") -> None:
    url = reverse("accounts:log_in", args=[location.group.slug, location.slug])
    response = client.post(url, {"user_id": user_id, "password": PASSWORD})
    assert response.status_code == 302


def view_event(exam: Exam, action: str = "report.view", **fields) -> AuditEvent:
    values = {
        "actor_kind": "account",
        "actor_id": 99,
        "patient_id": exam.visit.patient_id,
        "exam_id": exam.pk,
    }
    values.update(fields)
    return record_event(action, **values)


@pytest.mark.django_db
class TestActivityAccess:
    def test_share_link_recipient_gets_not_found(
        self, client, monkeypatch, rosa_chest
    ) -> None:
        recipient = Requester(
            kind="share",
            actor_id=5,
            patient_id=rosa_chest.visit.patient_id,
            exam_ids=frozenset({rosa_chest.pk}),
            client_address="192.0.2.1",
        )
        monkeypatch.setattr(
            "viewbox.viewer.views.requester_from_request", lambda request: recipient
        )
        assert client.get(ACTIVITY_URL).status_code == 404

    def test_visitor_without_session_is_sent_to_start(self, client, db) -> None:
        response = client.get(ACTIVITY_URL)
        assert response.status_code == 302
        assert response["Location"] == reverse("viewer:start")

    def test_url_name_resolves(self) -> None:
        assert reverse("audit:activity") == ACTIVITY_URL


@pytest.mark.django_db
class TestAccountActivity:
    def test_shows_only_the_patients_own_events(
        self, client, maryland, rosa_account, rosa_chest, other_exam
    ) -> None:
        view_event(other_exam)
        view_event(rosa_chest, "images.list")
        log_in(client, maryland)

        page = client.get(ACTIVITY_URL).content.decode()

        assert "You viewed the images of CT CHEST WITHOUT CONTRAST" in page
        assert "XR HAND" not in page
        assert "You logged in to your account." in page

    def test_hides_imports_and_portal_work(
        self, client, maryland, rosa_account, rosa_chest
    ) -> None:
        record_event(
            "images.import",
            actor_kind="import",
            patient_id=rosa_chest.visit.patient_id,
            exam_id=rosa_chest.pk,
        )
        log_in(client, maryland)
        page = client.get(ACTIVITY_URL).content.decode()
        assert "The portal" not in page
        assert "used the portal" not in page

    def test_names_recipients_of_shared_links(
        self, client, monkeypatch, maryland, rosa_account, rosa_chest
    ) -> None:
        view_event(rosa_chest, actor_kind="share", actor_id=5)
        view_event(rosa_chest, "share.create", share_link_id=5)
        view_event(rosa_chest, "share.password", actor_kind="share", actor_id=5)
        view_event(
            rosa_chest,
            "share.password",
            actor_kind="share",
            actor_id=5,
            outcome=AuditEvent.Outcome.FAILURE,
        )
        monkeypatch.setattr(
            queries, "_share_link_names", lambda ids: {5: "“For Dr. Demo”"}
        )
        log_in(client, maryland)

        page = client.get(ACTIVITY_URL).content.decode()

        assert (
            "Someone using your shared link “For Dr. Demo” viewed the report of "
            "CT CHEST WITHOUT CONTRAST (November 20, 2026)." in page
        )
        assert "You created the shared link “For Dr. Demo”." in page
        assert "Someone entered the password of the shared link “For Dr. Demo”." in (
            page
        )
        assert (
            "Someone entered a wrong password for the shared link “For Dr. Demo”."
            in page
        )

    def test_links_without_a_known_nickname_are_numbered(
        self, client, maryland, rosa_account, rosa_chest
    ) -> None:
        view_event(rosa_chest, "share.revoke", share_link_id=8)
        view_event(rosa_chest, "share.unlock", share_link_id=8)
        log_in(client, maryland)
        page = client.get(ACTIVITY_URL).content.decode()
        assert "You revoked the shared link number 8." in page
        assert "You unlocked the shared link number 8." in page

    def test_staff_actions_are_described(
        self, client, maryland, rosa_account, rosa_chest
    ) -> None:
        view_event(rosa_chest, "frontdesk.print_pass", actor_kind="staff", actor_id=2)
        view_event(rosa_chest, "icode.help_approve", actor_kind="staff", actor_id=2)
        log_in(client, maryland)
        page = client.get(ACTIVITY_URL).content.decode()
        assert "A staff member printed a Portal Pass for" in page
        assert "A staff member reactivated an I-Code for your visit." in page

    def test_pages_hold_25_entries_newest_first(
        self, client, maryland, rosa_account, rosa_chest
    ) -> None:
        for _number in range(30):
            view_event(rosa_chest, "image.view")
        view_event(rosa_chest, "download.file")
        log_in(client, maryland)

        first = client.get(ACTIVITY_URL).content.decode()
        second = client.get(ACTIVITY_URL + "?page=2").content.decode()

        assert first.count('class="activity__item"') == 25
        assert first.index("You downloaded") < first.index("You viewed an image")
        assert "Page 1 of 2" in first
        assert second.count('class="activity__item"') == 7
        assert "Page 2 of 2" in second

    def test_viewing_the_page_is_audited(self, client, maryland, rosa_account) -> None:
        log_in(client, maryland)
        client.get(ACTIVITY_URL)
        event = AuditEvent.objects.get(action="activity.view")
        assert event.actor_kind == "account"
        assert event.actor_id == str(rosa_account.pk)
        assert event.patient_id == rosa_account.patient_id


@pytest.mark.django_db
class TestICodeActivity:
    def test_sees_only_events_of_the_codes_exams(
        self, client, rosa_chest, rosa_knee
    ) -> None:
        view_event(rosa_chest, "report.view")
        view_event(rosa_knee, "report.print")
        sign_in_with_icode(client, rosa_chest)

        page = client.get(ACTIVITY_URL).content.decode()

        assert (
            "Someone logged in to your account viewed the report of "
            "CT CHEST WITHOUT CONTRAST"
        ) in page
        assert "MRI KNEE" not in page
        assert "You signed in with an I-Code." in page

    def test_names_another_icode_apart_from_you(self, client, rosa_chest) -> None:
        view_event(rosa_chest, "images.list", actor_kind="icode", actor_id=12345)
        sign_in_with_icode(client, rosa_chest)
        page = client.get(ACTIVITY_URL).content.decode()
        assert "Someone with an I-Code for your visit viewed the images" in page
        assert "You viewed the images" not in page

    def test_sees_recipients_of_links_to_its_exams(self, client, rosa_chest) -> None:
        sign_in_with_icode(client, rosa_chest)
        link = ShareLink.objects.create(
            patient=rosa_chest.visit.patient,
            icode=ICode.objects.get(),
            nickname="For Dr. Lee",
            token_hash="0" * 64,
            password_hash="x",
            expires_on=date(2099, 1, 1),
            expires_at=datetime(2099, 1, 2, tzinfo=UTC),
        )
        link.exams.set([rosa_chest])
        record_event(
            "share.password",
            outcome="failure",
            actor_kind="share",
            actor_id=link.pk,
            patient_id=rosa_chest.visit.patient_id,
            share_link_id=link.pk,
        )
        page = client.get(ACTIVITY_URL).content.decode()
        assert "entered a wrong password for the shared link" in page
        assert "For Dr. Lee" in page

    def test_does_not_see_the_accounts_sign_ins(
        self, client, maryland, rosa_account, rosa_chest
    ) -> None:
        log_in(Client(), maryland)
        sign_in_with_icode(client, rosa_chest)
        page = client.get(ACTIVITY_URL).content.decode()
        assert "logged in to your account" not in page
