"""When a signed report may be shown to the patient.

A report is shown only once a radiologist signed it (status F or C).
Some states hold it back so that the referring physician reads it first:
there it appears a fixed number of hours after it was both signed and sent
to the referring physician. Each corrected version or addendum follows the
rule from its own signing, and until it is released the patient keeps
seeing the version released before it.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from viewbox.records.models import Exam, ReportVersion

SIGNED_STATUSES = (ReportVersion.Status.FINAL, ReportVersion.Status.CORRECTED)


@dataclass(frozen=True)
class ReportState:
    """The report versions the Report tab may show, and the reason when none."""

    released: ReportVersion | None
    # The newest signed version still on hold, with its release time.
    held: ReportVersion | None
    held_until: datetime | None
    # True when every report version received so far is preliminary.
    awaiting_signature: bool
    hold_hours: int


def hold_hours_for(exam: Exam) -> int:
    state_code = exam.visit.location.state.code
    return int(settings.REPORT_HOLD_HOURS_BY_STATE.get(state_code, 0))


def release_time(version: ReportVersion, hold_hours: int) -> datetime | None:
    """Return when a signed version becomes visible, or None if it never does."""
    if version.status not in SIGNED_STATUSES or version.signed_at is None:
        return None
    if hold_hours == 0:
        return version.signed_at
    # The hold counts from the later of signing and sending, and a report
    # that was never sent to the referring physician stays held.
    if version.sent_to_referrer_at is None:
        return None
    start = max(version.signed_at, version.sent_to_referrer_at)
    return start + timedelta(hours=hold_hours)


def report_state(exam: Exam, now: datetime | None = None) -> ReportState:
    now = now or timezone.now()
    hold_hours = hold_hours_for(exam)
    versions = list(exam.report_versions.order_by("received_at", "pk"))
    signed = [v for v in versions if v.status in SIGNED_STATUSES]

    released = None
    held = None
    held_until = None
    for version in reversed(signed):
        available_at = release_time(version, hold_hours)
        if available_at is not None and available_at <= now:
            released = version
            break
        if held is None:
            held, held_until = version, available_at
    return ReportState(
        released=released,
        held=held,
        held_until=held_until,
        awaiting_signature=bool(versions) and not signed,
        hold_hours=hold_hours,
    )
