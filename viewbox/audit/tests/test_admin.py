import csv
import io

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client

from viewbox.audit.actions import record_event
from viewbox.audit.export import escape_cell
from viewbox.audit.models import AuditEvent
from viewbox.conftest import log_in_verified_staff

LIST_URL = "/staff/audit/auditevent/"
EXPORT_URL = "/staff/audit/auditevent/export/"


def staff_client(username: str, *, groups: tuple[str, ...] = (), perms=()) -> Client:
    user = get_user_model().objects.create_user(username, is_staff=True)
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    log_in_verified_staff(client, user)
    return client


def csv_rows(response) -> list[list[str]]:
    text = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture
def auditor(db) -> Client:
    return staff_client("ada.auditor", groups=("Auditors",))


@pytest.fixture
def entries(db) -> list[AuditEvent]:
    return [
        record_event("report.view", actor_kind="account", actor_id=1, patient_id=10),
        record_event("image.view", actor_kind="icode", actor_id=2, patient_id=20),
    ]


@pytest.mark.django_db
class TestStaffWithoutAuditorRole:
    def test_cannot_list_entries(self, entries) -> None:
        client = staff_client("fred.frontdesk")
        assert client.get(LIST_URL).status_code == 403

    def test_cannot_export(self, entries) -> None:
        client = staff_client("fred.frontdesk")
        assert client.get(EXPORT_URL).status_code == 403
        assert not AuditEvent.objects.filter(action="audit.export").exists()

    def test_viewer_without_export_permission_cannot_export(self, entries) -> None:
        client = staff_client("vera.viewer", perms=("view_auditevent",))
        assert client.get(LIST_URL).status_code == 200
        assert client.get(EXPORT_URL).status_code == 403
        response = client.post(
            LIST_URL,
            {"action": "export_selected", "_selected_action": [entries[0].pk]},
        )
        assert "text/csv" not in response["Content-Type"]


@pytest.mark.django_db
class TestAdminIsReadOnly:
    def test_change_form_rejects_posts(self, auditor, entries) -> None:
        url = f"{LIST_URL}{entries[0].pk}/change/"
        response = auditor.post(url, {"action": "report.print"})
        assert response.status_code == 403
        assert AuditEvent.objects.get(pk=entries[0].pk).action == "report.view"

    def test_delete_page_is_refused(self, auditor, entries) -> None:
        url = f"{LIST_URL}{entries[0].pk}/delete/"
        assert auditor.post(url, {"post": "yes"}).status_code == 403
        assert AuditEvent.objects.count() == 2

    def test_no_delete_action_is_offered(self, auditor, entries) -> None:
        page = auditor.get(LIST_URL).content.decode()
        assert "delete_selected" not in page
        assert auditor.get(f"{LIST_URL}add/").status_code == 403


@pytest.mark.django_db
class TestAuditorFiltersAndExports:
    def test_filters_by_patient_and_time_range(self, auditor, entries) -> None:
        response = auditor.get(
            LIST_URL,
            {
                "patient_id": "10",
                "at__date__gte": "2000-01-01",
                "at__date__lte": "2100-01-01",
            },
        )
        assert response.status_code == 200
        shown = list(response.context["cl"].result_list)
        assert shown == [entries[0]]

    def test_empty_range_fields_are_dropped(self, auditor, entries) -> None:
        response = auditor.get(LIST_URL, {"at__date__gte": "", "patient_id": "10"})
        assert response.status_code == 302
        assert response["Location"] == f"{LIST_URL}?patient_id=10"

    def test_searches_by_actor_id(self, auditor, entries) -> None:
        response = auditor.get(LIST_URL, {"q": "2"})
        assert list(response.context["cl"].result_list) == [entries[1]]

    def test_search_for_text_finds_nothing_without_error(
        self, auditor, entries
    ) -> None:
        response = auditor.get(LIST_URL, {"q": "not-an-id"})
        assert response.status_code == 200
        assert list(response.context["cl"].result_list) == []

    def test_export_follows_the_filters(self, auditor, entries) -> None:
        response = auditor.get(EXPORT_URL, {"actor_kind": "icode"})
        assert response.status_code == 200
        assert response["Content-Type"] == "text/csv; charset=utf-8"
        rows = csv_rows(response)
        assert rows[0][:4] == ["sequence", "at", "actor_kind", "actor_id"]
        assert [row[2] for row in rows[1:]] == ["icode"]

    def test_export_is_audited(self, auditor, entries) -> None:
        rows = csv_rows(auditor.get(EXPORT_URL))
        event = AuditEvent.objects.get(action="audit.export")
        assert event.actor_kind == "staff"
        # The export's own entry is the last one it contains.
        assert rows[-1][7] == "audit.export"

    def test_export_action_on_selected_entries(self, auditor, entries) -> None:
        response = auditor.post(
            LIST_URL,
            {"action": "export_selected", "_selected_action": [entries[1].pk]},
        )
        rows = csv_rows(response)
        assert [row[0] for row in rows[1:]] == [str(entries[1].sequence)]

    def test_export_escapes_formulas(self, auditor, db) -> None:
        for actor_id in ("=HYPERLINK(1)", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "7"):
            record_event("exam.list", actor_kind="account", actor_id=actor_id)
        rows = csv_rows(auditor.get(EXPORT_URL, {"action__exact": "exam.list"}))
        actor_ids = [row[3] for row in rows[1:]]
        assert actor_ids == [
            "'=HYPERLINK(1)",
            "'+1",
            "'-1",
            "'@SUM(A1)",
            "'\tx",
            "'\rx",
            "7",
        ]


class TestEscapeCell:
    def test_plain_values_are_unchanged(self) -> None:
        assert escape_cell("report.view") == "report.view"
        assert escape_cell(None) == ""
        assert escape_cell(12) == "12"

    def test_formula_inside_a_value_is_unchanged(self) -> None:
        assert escape_cell("a=b") == "a=b"
