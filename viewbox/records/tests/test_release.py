from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse

from viewbox.conftest import add_report, make_exam, make_patient, sign_in_with_icode
from viewbox.records.release import report_state

SIGNED = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
FINDINGS = "IMPRESSION: No acute abnormality in the chest."


@pytest.fixture
def ca_exam(california):
    alice = make_patient(
        california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
    )
    return make_exam(alice, california, "ACC1")


@pytest.fixture
def md_exam(maryland):
    bob = make_patient(maryland, "DEMO-2001", "Barbara", "Sample", date(1975, 9, 30))
    return make_exam(bob, maryland, "ACC2")


@pytest.mark.django_db
class TestHeldReport:
    def test_california_report_is_held_for_96_hours(self, ca_exam) -> None:
        add_report(ca_exam, "F", FINDINGS, SIGNED)
        state = report_state(ca_exam, now=SIGNED + timedelta(hours=95, minutes=59))
        assert state.released is None
        assert state.held_until == SIGNED + timedelta(hours=96)

    def test_california_report_appears_after_96_hours(self, ca_exam) -> None:
        add_report(ca_exam, "F", FINDINGS, SIGNED)
        assert (
            report_state(ca_exam, now=SIGNED + timedelta(hours=96)).released is not None
        )

    def test_hold_counts_from_sending_when_sent_later(self, ca_exam) -> None:
        sent = SIGNED + timedelta(hours=5)
        add_report(ca_exam, "F", FINDINGS, SIGNED, sent_at=sent)
        assert report_state(ca_exam, now=SIGNED + timedelta(hours=97)).released is None
        assert (
            report_state(ca_exam, now=sent + timedelta(hours=96)).released is not None
        )

    def test_texas_holds_too(self, ca_exam) -> None:
        state = ca_exam.visit.location.state
        state.code = "TX"
        state.save()
        add_report(ca_exam, "F", FINDINGS, SIGNED)
        assert report_state(ca_exam, now=SIGNED + timedelta(hours=1)).released is None

    def test_hold_is_configuration(self, ca_exam, settings) -> None:
        settings.REPORT_HOLD_HOURS_BY_STATE = {}
        add_report(ca_exam, "F", FINDINGS, SIGNED)
        assert report_state(ca_exam, now=SIGNED).released is not None

    def test_corrected_version_is_held_from_its_own_signing(self, ca_exam) -> None:
        first = add_report(ca_exam, "F", FINDINGS, SIGNED)
        corrected_at = SIGNED + timedelta(days=5)
        add_report(ca_exam, "C", FINDINGS + " ADDENDUM: Small nodule.", corrected_at)
        state = report_state(ca_exam, now=corrected_at + timedelta(hours=1))
        assert state.released == first
        assert state.held_until == corrected_at + timedelta(hours=96)

    def test_report_never_sent_stays_held(self, ca_exam) -> None:
        version = add_report(ca_exam, "F", FINDINGS, SIGNED)
        version.sent_to_referrer_at = None
        version.save()
        state = report_state(ca_exam, now=SIGNED + timedelta(days=30))
        assert state.released is None
        assert state.held == version
        assert state.held_until is None


@pytest.mark.django_db
class TestReleasedReport:
    def test_maryland_report_appears_at_once(self, md_exam) -> None:
        add_report(md_exam, "F", FINDINGS, SIGNED)
        assert report_state(md_exam, now=SIGNED).released is not None

    def test_preliminary_report_is_never_shown(self, md_exam) -> None:
        add_report(md_exam, "P", "PRELIMINARY: under review", SIGNED)
        state = report_state(md_exam, now=SIGNED + timedelta(days=365))
        assert state.released is None
        assert state.awaiting_signature

    def test_corrected_version_replaces_the_final_once_released(self, md_exam) -> None:
        add_report(md_exam, "F", FINDINGS, SIGNED)
        corrected = add_report(
            md_exam, "C", FINDINGS + " ADDENDUM", SIGNED + timedelta(hours=2)
        )
        assert (
            report_state(md_exam, now=SIGNED + timedelta(hours=3)).released == corrected
        )


@pytest.mark.django_db
class TestReportTab:
    def test_held_report_tab_says_why_and_when(self, client, ca_exam) -> None:
        add_report(ca_exam, "F", FINDINGS, SIGNED)
        with time_machine.travel(SIGNED + timedelta(hours=2), tick=False):
            sign_in_with_icode(client, ca_exam)
            page = client.get(
                reverse("viewer:exam_report", args=[ca_exam.public_id])
            ).content.decode()
        assert FINDINGS not in page
        assert "96 hours after it was signed and sent to them" in page
        # 2026-12-05 18:00 UTC is 10:00 in Los Angeles.
        assert "Your report will appear here on December 5, 2026, 10:00 AM PST." in page

    def test_held_report_tab_speaks_spanish(self, client, ca_exam) -> None:
        add_report(ca_exam, "F", FINDINGS, SIGNED)
        client.cookies["django_language"] = "es"
        with time_machine.travel(SIGNED + timedelta(hours=2), tick=False):
            sign_in_with_icode(client, ca_exam)
            url = reverse("viewer:exam_report", args=[ca_exam.public_id])
            page = client.get(url).content.decode()
        assert '<html lang="es">' in page
        assert "Su informe aparecerá aquí el 5 de diciembre de 2026, 10:00 PST." in page

    def test_held_report_print_view_is_not_found(self, client, ca_exam) -> None:
        add_report(ca_exam, "F", FINDINGS, SIGNED)
        with time_machine.travel(SIGNED + timedelta(hours=2), tick=False):
            sign_in_with_icode(client, ca_exam)
            response = client.get(
                reverse("viewer:exam_report_print", args=[ca_exam.public_id])
            )
        assert response.status_code == 404

    def test_held_report_absent_from_exam_pages(self, client, ca_exam) -> None:
        add_report(ca_exam, "F", FINDINGS, SIGNED)
        with time_machine.travel(SIGNED + timedelta(hours=2), tick=False):
            sign_in_with_icode(client, ca_exam)
            for name in ("exam_summary", "exam_report", "exam_images"):
                page = client.get(
                    reverse(f"viewer:{name}", args=[ca_exam.public_id])
                ).content
                assert b"No acute abnormality" not in page, name

    def test_preliminary_report_tab_says_not_signed(self, client, md_exam) -> None:
        add_report(md_exam, "P", "PRELIMINARY: under review", SIGNED)
        sign_in_with_icode(client, md_exam)
        page = client.get(
            reverse("viewer:exam_report", args=[md_exam.public_id])
        ).content.decode()
        assert "PRELIMINARY" not in page
        assert "It will appear here once it is signed." in page

    def test_released_report_is_shown_and_printable(self, client, md_exam) -> None:
        add_report(md_exam, "F", FINDINGS, SIGNED)
        sign_in_with_icode(client, md_exam)
        page = client.get(
            reverse("viewer:exam_report", args=[md_exam.public_id])
        ).content.decode()
        assert FINDINGS in page
        assert "Signed by Dr. Ima Reader" in page
        printed = client.get(
            reverse("viewer:exam_report_print", args=[md_exam.public_id])
        )
        assert printed.status_code == 200
        assert FINDINGS in printed.content.decode()

    def test_report_text_is_escaped(self, client, md_exam) -> None:
        add_report(md_exam, "F", "<script>alert(1)</script> & more", SIGNED)
        sign_in_with_icode(client, md_exam)
        for name in ("exam_report", "exam_report_print"):
            page = client.get(
                reverse(f"viewer:{name}", args=[md_exam.public_id])
            ).content.decode()
            assert "<script>alert(1)</script>" not in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
