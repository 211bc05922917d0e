"""Making share links, opening them with their password, and managing them."""

import enum
import hashlib
import logging
import secrets
import uuid
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.hashers import check_password, make_password
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from django.utils import timezone

from viewbox.access import throttle
from viewbox.access.models import ICode
from viewbox.access.scope import (
    SESSION_SHARE_ID,
    SESSION_SIGNED_IN_AT,
    Requester,
    client_address,
    usable_link,
)
from viewbox.audit.actions import record_event
from viewbox.audit.models import AuditEvent
from viewbox.records.models import Exam
from viewbox.sharing.models import ShareAccess, ShareLink

logger = logging.getLogger(__name__)

# The link a browser brought, kept between the token URL and the password
# page so that the token leaves the address bar at once.
SESSION_PENDING_LINK = "viewbox_share_pending"
# The problem with a token URL that led to no usable link.
SESSION_PENDING_PROBLEM = "viewbox_share_problem"
# The link just made, shown once on the next page.
SESSION_NEW_LINK = "viewbox_share_new"

TOKEN_BYTES = 24  # 192 bits


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """Return the stored form of a token.

    A plain hash is enough: the token is random and too long to guess, so
    nothing can be learned by hashing candidates.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def may_share(requester: Requester) -> bool:
    """Patients share; recipients of a link cannot pass it on."""
    return requester.kind in ("icode", "account")


def links_for(requester: Requester) -> QuerySet[ShareLink]:
    """Return the links the requester may see and manage, newest first.

    A session manages the links it could have made itself: those whose
    exams are all in its scope. An account so gets every link of its
    patient, and an I-Code session the links to the exams its code opens.
    """
    if not may_share(requester):
        return ShareLink.objects.none()
    outside = Exam.objects.exclude(pk__in=requester.exam_ids)
    return ShareLink.objects.filter(patient_id=requester.patient_id).exclude(
        exams__in=outside
    )


def link_by_public_id(requester: Requester, public_id: str) -> ShareLink:
    try:
        parsed = uuid.UUID(public_id)
    except ValueError:
        parsed = None
    link = links_for(requester).filter(public_id=parsed).first() if parsed else None
    if link is None:
        logger.info(
            "Rejected share link lookup for %s %d", requester.kind, requester.actor_id
        )
        raise Http404("Not found")
    return link


def end_of_day(day: date, time_zone: ZoneInfo) -> datetime:
    """Return the moment ``day`` ends in ``time_zone``, in UTC."""
    try:
        following = day + timedelta(days=1)
        return datetime.combine(following, time.min, tzinfo=time_zone).astimezone(
            ZoneInfo("UTC")
        )
    except OverflowError:
        return datetime.max.replace(tzinfo=ZoneInfo("UTC")) - timedelta(days=2)


def link_time_zone(exams: Sequence[Exam]) -> ZoneInfo:
    return ZoneInfo(exams[0].visit.location.state.time_zone)


def icode_end_date(icode: ICode, exams: Sequence[Exam]) -> date:
    """Return the local date on which links made with ``icode`` stop working."""
    return icode.expires_at.astimezone(link_time_zone(exams)).date()


def works_through(link: ShareLink, exams: Sequence[Exam]) -> date:
    """Return a link's last day: its own date, or its I-Code's end if earlier."""
    if link.icode is None or not exams:
        return link.expires_on
    return min(link.expires_on, icode_end_date(link.icode, exams))


def create_link(
    requester: Requester,
    exams: Sequence[Exam],
    *,
    nickname: str,
    password: str,
    expires_on: date,
    allow_download: bool,
    notify_email: str = "",
    language: str = "en",
) -> tuple[ShareLink, str]:
    """Make a link to ``exams``; return it and its token, shown this once.

    ``exams`` must come from the requester's own scope.
    """
    if not may_share(requester) or not exams:
        raise PermissionError("This session cannot share these exams.")
    if any(exam.pk not in requester.exam_ids for exam in exams):
        raise PermissionError("An exam is outside the session's scope.")
    token = new_token()
    with transaction.atomic():
        link = ShareLink.objects.create(
            patient_id=requester.patient_id,
            account_id=requester.actor_id if requester.kind == "account" else None,
            icode_id=requester.actor_id if requester.kind == "icode" else None,
            nickname=nickname,
            token_hash=hash_token(token),
            password_hash=make_password(password),
            allow_download=allow_download,
            expires_on=expires_on,
            expires_at=end_of_day(expires_on, link_time_zone(exams)),
            notify_email=notify_email,
            language=language,
        )
        link.exams.set(exams)
        for exam in exams:
            _audit(requester, "share.create", link, exam_id=exam.pk)
    logger.info(
        "Share link %d created by %s %d", link.pk, requester.kind, requester.actor_id
    )
    return link, token


def _audit(
    requester: Requester,
    action: str,
    link: ShareLink,
    *,
    exam_id: int | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
) -> None:
    record_event(
        action,
        outcome=outcome,
        actor_kind=requester.kind,
        actor_id=requester.actor_id,
        patient_id=link.patient_id,
        exam_id=exam_id,
        share_link_id=link.pk,
        client_address=requester.client_address,
    )


def revoke_link(requester: Requester, link: ShareLink) -> None:
    if link.revoked_at is None:
        ShareLink.objects.filter(pk=link.pk).update(revoked_at=timezone.now())
        _audit(requester, "share.revoke", link)
        logger.info("Share link %d revoked", link.pk)


def change_expiry(requester: Requester, link: ShareLink, expires_on: date) -> None:
    exams = list(link.exams.select_related("visit__location__state")[:1])
    time_zone = link_time_zone(exams) if exams else ZoneInfo("UTC")
    ShareLink.objects.filter(pk=link.pk).update(
        expires_on=expires_on, expires_at=end_of_day(expires_on, time_zone)
    )
    _audit(requester, "share.change", link)


def unlock_link(requester: Requester, link: ShareLink) -> None:
    ShareLink.objects.filter(pk=link.pk).update(
        locked_at=None, paused_until=None, wrong_passwords=0
    )
    _audit(requester, "share.unlock", link)
    logger.info("Share link %d unlocked", link.pk)


# The recipient's side.


class OpenResult(enum.Enum):
    SUCCESS = "success"
    WRONG = "wrong"
    PAUSED = "paused"
    LOCKED = "locked"
    THROTTLED = "throttled"
    ENDED = "ended"


def _client_keys(request: HttpRequest) -> dict[str, str]:
    return {"share-client": throttle.bucket_key(client_address(request) or "unknown")}


def client_locked(request: HttpRequest) -> bool:
    return bool(throttle.locked_buckets(settings.SHARE_THROTTLE, _client_keys(request)))


def count_client_failure(request: HttpRequest) -> None:
    for bucket in throttle.record_failure(
        settings.SHARE_THROTTLE, _client_keys(request)
    ):
        logger.warning("Share link limit reached for bucket %s", bucket)


def link_for_token(token: str) -> ShareLink | None:
    return (
        ShareLink.objects.select_related("icode", "account__user")
        .filter(token_hash=hash_token(token))
        .first()
    )


def open_link(request: HttpRequest, link: ShareLink, password: str) -> OpenResult:
    """Check a recipient's password; on success, start the recipient's session.

    Each tenth wrong password in a row pauses the link for a while, and the
    limit locks it until the patient unlocks it. Every try is written down
    for the patient to see.
    """
    address = client_address(request)
    if usable_link(link) is not None:
        return OpenResult.ENDED
    if client_locked(request):
        logger.warning("Share link password rejected: client limit reached")
        return OpenResult.THROTTLED
    now = timezone.now()
    first_open = False
    stopped: OpenResult | None = None
    with transaction.atomic():
        locked = ShareLink.objects.select_for_update().get(pk=link.pk)
        if locked.locked_at is not None:
            outcome = ShareAccess.Outcome.LOCKED
        elif locked.paused_until is not None and locked.paused_until > now:
            outcome = ShareAccess.Outcome.PAUSED
        elif check_password(password, locked.password_hash):
            outcome = ShareAccess.Outcome.RIGHT
            first_open = locked.first_opened_at is None
            ShareLink.objects.filter(pk=link.pk).update(
                wrong_passwords=0,
                paused_until=None,
                last_used_at=now,
                first_opened_at=locked.first_opened_at or now,
            )
        else:
            outcome = ShareAccess.Outcome.WRONG
            stopped = _count_wrong_password(locked, now)
        ShareAccess.objects.create(link=link, at=now, outcome=outcome)
    record_event(
        "share.password",
        outcome=(
            AuditEvent.Outcome.SUCCESS
            if outcome == ShareAccess.Outcome.RIGHT
            else AuditEvent.Outcome.FAILURE
        ),
        actor_kind="share",
        actor_id=link.pk,
        patient_id=link.patient_id,
        share_link_id=link.pk,
        client_address=address,
    )
    if outcome == ShareAccess.Outcome.WRONG:
        count_client_failure(request)
        # The wrong password that pauses or locks the link reports it at once.
        return stopped or OpenResult.WRONG
    if outcome == ShareAccess.Outcome.PAUSED:
        return OpenResult.PAUSED
    if outcome == ShareAccess.Outcome.LOCKED:
        return OpenResult.LOCKED
    _start_recipient_session(request, link)
    if first_open and link.notify_email:
        from viewbox.sharing.tasks import send_first_open_notice

        transaction.on_commit(
            lambda: send_first_open_notice.enqueue(
                link.pk, request.build_absolute_uri("/")
            )
        )
    return OpenResult.SUCCESS


def _count_wrong_password(link: ShareLink, now: datetime) -> OpenResult | None:
    """Count a wrong password; return PAUSED or LOCKED if it stopped the link."""
    wrong = link.wrong_passwords + 1
    changes: dict[str, object] = {"wrong_passwords": wrong}
    stopped = None
    if wrong >= settings.SHARE_LOCK_AFTER:
        changes["locked_at"] = now
        stopped = OpenResult.LOCKED
        logger.warning("Share link %d locked after wrong passwords", link.pk)
    elif wrong % settings.SHARE_PAUSE_EVERY == 0:
        changes["paused_until"] = now + timedelta(minutes=settings.SHARE_PAUSE_MINUTES)
        stopped = OpenResult.PAUSED
        logger.warning("Share link %d paused after wrong passwords", link.pk)
    ShareLink.objects.filter(pk=link.pk).update(**changes)
    return stopped


def pause_minutes_left(link: ShareLink) -> int:
    link.refresh_from_db(fields=["paused_until"])
    if link.paused_until is None:
        return 0
    seconds = (link.paused_until - timezone.now()).total_seconds()
    return max(1, -(-int(seconds) // 60))


def _start_recipient_session(request: HttpRequest, link: ShareLink) -> None:
    """Replace whatever session the browser had with the recipient's."""
    # logout() flushes the session, so a patient signed in on this browser
    # is signed out rather than mixed with the recipient.
    logout(request)
    request.session.cycle_key()
    request.session[SESSION_SHARE_ID] = link.pk
    request.session[SESSION_SIGNED_IN_AT] = timezone.now().timestamp()
    logger.info("Share link %d opened", link.pk)
