"""Front desk actions: print Portal Pass codes, decide Get Help requests,
attach images.

Each action saves its change, writes the audit row with the staff member's
id and queues any email.
"""

import logging
from collections.abc import Sequence
from datetime import date, datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone, translation

from viewbox.access import codes
from viewbox.access.actions import issue_icode
from viewbox.access.models import ICode
from viewbox.audit.actions import record_event
from viewbox.directory.models import Location
from viewbox.frontdesk.models import HelpRequest
from viewbox.frontdesk.portal_pass import PassCode
from viewbox.frontdesk.queries import matching_icode
from viewbox.frontdesk.tasks import send_help_answer
from viewbox.records.models import Exam, Study, Visit

logger = logging.getLogger(__name__)


class NotPending(Exception):
    """Raised when a Get Help request was already approved or declined."""


class NoMatch(Exception):
    """Raised when approving a request whose details match no I-Code."""


class StudyAlreadyAttached(Exception):
    """Raised when a study was attached to an exam in the meantime."""


def issue_pass_codes(
    staff: User,
    visit: Visit,
    exams: Sequence[Exam],
    *,
    per_exam: bool,
    revoke_older: bool,
) -> list[PassCode]:
    """Issue the I-Codes of one Portal Pass: one for the exams, or one each.

    With ``revoke_older``, the unrevoked I-Codes that open any of ``exams``
    stop working, for a pass that was lost or handed to the wrong person.
    Without it, earlier passes keep working, so that a second copy for a
    guardian does not lock out the first.
    """
    if not exams or any(exam.visit_id != visit.pk for exam in exams):
        raise ValueError("A Portal Pass opens one or more exams of one visit.")
    groups = [[exam] for exam in exams] if per_exam else [list(exams)]
    now = timezone.now()

    with transaction.atomic():
        if revoke_older:
            _revoke_icodes(staff, visit, exams, now)
        issued = []
        for group in groups:
            icode, code = issue_icode(visit, group)
            issued.append(PassCode(code=code, exams=group, expires_at=icode.expires_at))
        for exam in exams:
            record_event(
                "frontdesk.print_pass",
                actor_kind="staff",
                actor_id=staff.pk,
                patient_id=visit.patient_id,
                exam_id=exam.pk,
            )
    logger.info(
        "Staff member %d printed a Portal Pass with %d I-Codes for visit %d",
        staff.pk,
        len(issued),
        visit.pk,
    )
    return issued


def _revoke_icodes(
    staff: User, visit: Visit, exams: Sequence[Exam], now: datetime
) -> None:
    older = list(
        ICode.objects.filter(visit=visit, revoked_at__isnull=True, exams__in=exams)
        .values_list("pk", flat=True)
        .distinct()
    )
    ICode.objects.filter(pk__in=older).update(revoked_at=now)
    for icode_id in older:
        record_event(
            "icode.revoke",
            actor_kind="staff",
            actor_id=staff.pk,
            patient_id=visit.patient_id,
        )
        logger.info("Staff member %d revoked I-Code %d", staff.pk, icode_id)


def submit_help_request(
    location: Location,
    name: str,
    birth_date: date,
    typed_code: str,
    email: str,
    client_address: str | None,
) -> HelpRequest:
    """Store a Get Help request for staff, whether or not anything matches."""
    symbols = codes.normalize_code(typed_code)
    help_request = HelpRequest.objects.create(
        location=location,
        name=name.strip(),
        birth_date=birth_date,
        code_hash=codes.hash_code(symbols) if symbols else "",
        email=email,
        language=translation.get_language() or settings.LANGUAGE_CODE,
        created_at=timezone.now(),
    )
    record_event(
        "icode.help_request", actor_kind="anonymous", client_address=client_address
    )
    logger.info("Stored Get Help request %d", help_request.pk)
    return help_request


def approve_help_request(staff: User, help_request_id: int, portal_url: str) -> ICode:
    """Renew the typed I-Code for ``ICODE_VALID_DAYS`` from now, and email.

    Raise NotPending when the request was already decided, and NoMatch when
    the code, name and date of birth do not all match one I-Code's visit.
    """
    now = timezone.now()
    with transaction.atomic():
        # The row lock stops two staff members from deciding one request twice.
        help_request = HelpRequest.objects.select_for_update().get(pk=help_request_id)
        if help_request.status != HelpRequest.Status.PENDING:
            raise NotPending(help_request_id)
        icode = matching_icode(help_request)
        if icode is None:
            raise NoMatch(help_request_id)
        icode.expires_at = now + timedelta(days=settings.ICODE_VALID_DAYS)
        icode.save(update_fields=["expires_at"])
        _decide(help_request, staff, HelpRequest.Status.APPROVED, now, icode)
        record_event(
            "icode.help_approve",
            actor_kind="staff",
            actor_id=staff.pk,
            patient_id=icode.visit.patient_id,
        )
        transaction.on_commit(
            lambda: send_help_answer.enqueue(help_request.pk, portal_url)
        )
    logger.info(
        "Staff member %d approved Get Help request %d, renewing I-Code %d",
        staff.pk,
        help_request.pk,
        icode.pk,
    )
    return icode


def decline_help_request(staff: User, help_request_id: int, portal_url: str) -> None:
    """Decline a request and email the person to call their imaging center."""
    now = timezone.now()
    with transaction.atomic():
        help_request = HelpRequest.objects.select_for_update().get(pk=help_request_id)
        if help_request.status != HelpRequest.Status.PENDING:
            raise NotPending(help_request_id)
        _decide(help_request, staff, HelpRequest.Status.DECLINED, now, None)
        record_event("icode.help_decline", actor_kind="staff", actor_id=staff.pk)
        transaction.on_commit(
            lambda: send_help_answer.enqueue(help_request.pk, portal_url)
        )
    logger.info(
        "Staff member %d declined Get Help request %d", staff.pk, help_request.pk
    )


def _decide(
    help_request: HelpRequest,
    staff: User,
    status: str,
    now: datetime,
    icode: ICode | None,
) -> None:
    help_request.status = status
    help_request.decided_at = now
    help_request.decided_by_id = staff.pk
    help_request.icode = icode
    help_request.save(update_fields=["status", "decided_at", "decided_by", "icode"])


def attach_study(staff: User, study_id: int, exam: Exam) -> None:
    """Attach a study that waits for its order to an exam that staff chose.

    Raise StudyAlreadyAttached when another request attached it first.
    """
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        if study.exam_id is not None:
            raise StudyAlreadyAttached(study_id)
        study.exam = exam
        study.save(update_fields=["exam"])
        record_event(
            "images.attach",
            actor_kind="staff",
            actor_id=staff.pk,
            patient_id=exam.visit.patient_id,
            exam_id=exam.pk,
        )
    logger.info(
        "Staff member %d attached study %d to exam %d", staff.pk, study_id, exam.pk
    )
