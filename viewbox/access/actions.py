import enum
import logging
from collections.abc import Iterable
from datetime import date, timedelta

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from viewbox.access import codes, throttle
from viewbox.access.models import ICode
from viewbox.access.scope import (
    SESSION_ICODE_ID,
    SESSION_SIGNED_IN_AT,
    client_address,
    requester_from_request,
)
from viewbox.audit.actions import record_event
from viewbox.audit.models import AuditEvent
from viewbox.directory.models import ImagingGroup
from viewbox.records.models import Exam, Visit

logger = logging.getLogger(__name__)


def minutes_until_unlocked(request: HttpRequest, typed_code: str) -> int:
    """Return the whole minutes a throttled client has to wait, at least 1."""
    keys = _throttle_keys(request, typed_code)
    seconds = throttle.seconds_until_unlocked(settings.ICODE_THROTTLE, keys)
    return max(1, -(-seconds // 60))


class SignInResult(enum.Enum):
    SUCCESS = "success"
    INVALID = "invalid"
    EXPIRED = "expired"
    THROTTLED = "throttled"


def issue_icode(visit: Visit, exams: Iterable[Exam] | None = None) -> tuple[ICode, str]:
    """Create an I-Code for some exams of a visit; return it and the code.

    The code is returned this once, for the Portal Pass, and never stored.
    """
    chosen = list(exams) if exams is not None else list(visit.exams.all())
    if any(exam.visit_id != visit.pk for exam in chosen):
        raise ValueError("An I-Code opens exams of one visit only.")
    code = codes.generate_code()
    now = timezone.now()
    with transaction.atomic():
        icode = ICode.objects.create(
            visit=visit,
            code_hash=codes.hash_code(codes.normalize_code(code) or ""),
            issued_at=now,
            expires_at=now + timedelta(days=settings.ICODE_VALID_DAYS),
        )
        icode.exams.set(chosen)
        record_event("icode.issue", patient_id=visit.patient_id, actor_kind="system")
    logger.info("Issued I-Code %d for visit %d", icode.pk, visit.pk)
    return icode, code


def _throttle_keys(request: HttpRequest, typed_code: str) -> dict[str, str]:
    symbols = codes.normalize_code(typed_code) or typed_code.strip().upper()
    return {
        "icode-client": throttle.bucket_key(client_address(request) or "unknown"),
        "icode-code": throttle.bucket_key(symbols),
        "icode-portal": throttle.PORTAL_KEY,
    }


def _find_icode(group: ImagingGroup, typed_code: str, birth_date: date) -> ICode | None:
    symbols = codes.normalize_code(typed_code)
    if symbols is None:
        return None
    icode = (
        ICode.objects.select_related("visit__patient", "visit__location")
        .filter(code_hash=codes.hash_code(symbols), revoked_at__isnull=True)
        .first()
    )
    if icode is None:
        return None
    visit = icode.visit
    if visit.location.group_id != group.pk or visit.patient.birth_date != birth_date:
        return None
    return icode


def sign_in_with_icode(
    request: HttpRequest, group: ImagingGroup, typed_code: str, birth_date: date
) -> SignInResult:
    """Open a session for the exams of an I-Code when code and birth date match.

    A wrong code and a wrong birth date fail alike, and each failure counts
    against the client, the code and the whole portal, so that guesses
    spread over many codes or many addresses run out as well.
    """
    limits = settings.ICODE_THROTTLE
    keys = _throttle_keys(request, typed_code)
    address = client_address(request)

    locked = throttle.locked_buckets(limits, keys)
    if locked:
        logger.warning("I-Code sign-in rejected: locked by %s", ", ".join(locked))
        record_event(
            "icode.sign_in_throttled",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="anonymous",
            client_address=address,
        )
        return SignInResult.THROTTLED

    icode = _find_icode(group, typed_code, birth_date)
    if icode is None:
        newly_locked = throttle.record_failure(limits, keys)
        for bucket in newly_locked:
            logger.warning("I-Code sign-in limit reached for bucket %s", bucket)
        record_event(
            "icode.sign_in",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="anonymous",
            client_address=address,
        )
        return SignInResult.INVALID

    patient_id = icode.visit.patient_id
    if icode.expires_at <= timezone.now():
        record_event(
            "icode.sign_in_expired",
            outcome=AuditEvent.Outcome.FAILURE,
            actor_kind="icode",
            actor_id=icode.pk,
            patient_id=patient_id,
            client_address=address,
        )
        return SignInResult.EXPIRED

    # A fresh session id, so that an id planted before sign-in is worthless.
    request.session.cycle_key()
    request.session[SESSION_ICODE_ID] = icode.pk
    request.session[SESSION_SIGNED_IN_AT] = timezone.now().timestamp()
    record_event(
        "icode.sign_in",
        actor_kind="icode",
        actor_id=icode.pk,
        patient_id=patient_id,
        client_address=address,
    )
    logger.info("I-Code %d signed in", icode.pk)
    return SignInResult.SUCCESS


def sign_out(request: HttpRequest) -> None:
    """End the session, whether an I-Code, an account or a link opened it."""
    requester = requester_from_request(request)
    # flush() also ends the logged-in user's session.
    request.session.flush()
    if requester is not None:
        record_event(
            "sign_out",
            actor_kind=requester.kind,
            actor_id=requester.actor_id,
            patient_id=requester.patient_id,
            client_address=requester.client_address,
        )
