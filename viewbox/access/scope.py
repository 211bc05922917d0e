"""The one way to reach patient data from a request.

Every view that shows an exam, an image or a report looks it up here. A
lookup outside the requester's scope raises Http404, the same as an id that
does not exist, so an outsider cannot learn which ids are real.
"""

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from django.utils import timezone

from viewbox.access.models import ICode
from viewbox.accounts.models import Account
from viewbox.records.models import Exam, Instance
from viewbox.sharing.models import ShareLink

if TYPE_CHECKING:
    from viewbox.downloads.models import Package

logger = logging.getLogger(__name__)

SESSION_ICODE_ID = "viewbox_icode_id"
SESSION_SIGNED_IN_AT = "viewbox_signed_in_at"
SESSION_SHARE_ID = "viewbox_share_id"
# Set when a recipient's link stops working, so the next page can explain why.
SESSION_SHARE_ENDED = "viewbox_share_ended"
# A recipient's use of a link is written down at most this often.
SHARE_USE_RESOLUTION_SECONDS = 60


@dataclass(frozen=True)
class Requester:
    """The signed-in party behind a request, and the exams it may see.

    ``kind`` is "icode", "account" or "share" (the recipient of a link).
    """

    kind: str
    actor_id: int
    patient_id: int
    exam_ids: frozenset[int]
    client_address: str | None
    can_download: bool = True

    @property
    def is_recipient(self) -> bool:
        return self.kind == "share"


def client_address(request: HttpRequest) -> str | None:
    """Return the client's IP address, as the nearest trusted proxy saw it.

    With PROXY_COUNT proxies in front, the address is that many entries from
    the right of X-Forwarded-For, since entries further left come from the
    client and can be forged. Without proxies it is the peer address.
    """
    if settings.PROXY_COUNT > 0:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= settings.PROXY_COUNT:
            return hops[-settings.PROXY_COUNT]
    return request.META.get("REMOTE_ADDR")


def requester_from_request(request: HttpRequest) -> Requester | None:
    """Return the requester of a signed-in session, or None.

    The I-Code or account is checked again on every request, so a code that
    expires or is revoked, or an account that is disabled, ends the sessions
    it opened. Every session also ends a fixed time after sign-in.
    """
    signed_in_at = request.session.get(SESSION_SIGNED_IN_AT)
    if signed_in_at is None:
        return None
    age = timezone.now().timestamp() - float(signed_in_at)
    if not 0 <= age < settings.SESSION_ABSOLUTE_SECONDS:
        request.session.flush()
        return None
    if SESSION_SHARE_ID in request.session:
        return _share_requester(request)
    if request.user.is_authenticated:
        return _account_requester(request)
    return _icode_requester(request)


def _account_requester(request: HttpRequest) -> Requester | None:
    user_id = request.user.pk
    account = (
        Account.objects.filter(user_id=user_id, user__is_active=True).first()
        if user_id is not None
        else None
    )
    if account is None:
        request.session.flush()
        return None
    exam_ids = frozenset(
        Exam.objects.filter(visit__patient_id=account.patient_id).values_list(
            "pk", flat=True
        )
    )
    return Requester(
        kind="account",
        actor_id=account.pk,
        patient_id=account.patient_id,
        exam_ids=exam_ids,
        client_address=client_address(request),
    )


def _icode_requester(request: HttpRequest) -> Requester | None:
    icode_id = request.session.get(SESSION_ICODE_ID)
    if icode_id is None:
        return None
    icode = (
        ICode.objects.select_related("visit")
        .filter(pk=icode_id, revoked_at__isnull=True, expires_at__gt=timezone.now())
        .first()
    )
    if icode is None:
        request.session.flush()
        return None
    exam_ids = frozenset(icode.exams.values_list("pk", flat=True))
    return Requester(
        kind="icode",
        actor_id=icode.pk,
        patient_id=icode.visit.patient_id,
        exam_ids=exam_ids,
        client_address=client_address(request),
    )


def usable_link(link: ShareLink) -> str | None:
    """Return why a link no longer opens anything, or None if it does.

    A link whose I-Code or account no longer works counts as revoked.
    """
    if link.revoked_at is not None:
        return "revoked"
    if link.is_expired():
        return "expired"
    if link.creator_stopped():
        return "revoked"
    return None


def _share_requester(request: HttpRequest) -> Requester | None:
    link = (
        ShareLink.objects.select_related("icode", "account__user")
        .filter(pk=request.session[SESSION_SHARE_ID])
        .first()
    )
    ended = "revoked" if link is None else usable_link(link)
    if link is None or ended is not None:
        request.session.flush()
        request.session[SESSION_SHARE_ENDED] = ended
        return None
    now = timezone.now()
    if (
        link.last_used_at is None
        or (now - link.last_used_at).total_seconds() > SHARE_USE_RESOLUTION_SECONDS
    ):
        ShareLink.objects.filter(pk=link.pk).update(last_used_at=now)
    exam_ids = frozenset(link.exams.values_list("pk", flat=True))
    return Requester(
        kind="share",
        actor_id=link.pk,
        patient_id=link.patient_id,
        exam_ids=exam_ids,
        client_address=client_address(request),
        can_download=link.allow_download,
    )


def exams_for(requester: Requester) -> QuerySet[Exam]:
    """Return the requester's exams, newest first, cancelled ones left out."""
    return (
        Exam.objects.filter(
            pk__in=requester.exam_ids, visit__patient_id=requester.patient_id
        )
        .exclude(status=Exam.Status.CANCELLED)
        .select_related("visit__location__state", "visit__patient")
        .order_by("-visit__date_of_service", "-performed_at", "pk")
    )


def _parse_public_id(value: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _not_found(requester: Requester, kind: str) -> Http404:
    logger.info(
        "Rejected %s lookup for %s %d", kind, requester.kind, requester.actor_id
    )
    return Http404("Not found")


def access_exam_by_public_id(requester: Requester, public_id: str | uuid.UUID) -> Exam:
    parsed = _parse_public_id(public_id)
    exam = exams_for(requester).filter(public_id=parsed).first() if parsed else None
    if exam is None:
        raise _not_found(requester, "exam")
    return exam


def images_visible(exam: Exam) -> bool:
    """Images show once the exam is completed, never before."""
    return exam.status == Exam.Status.COMPLETED


def instances_for(exam: Exam) -> QuerySet[Instance]:
    """Return the exam's images in series order; none before completion.

    Only call with an exam that came from ``access_exam_by_public_id``.
    """
    if not images_visible(exam):
        return Instance.objects.none()
    return (
        Instance.objects.filter(series__study__exam=exam)
        .select_related("series")
        .order_by("series__series_number", "series_id", "instance_number", "pk")
    )


def access_instance_by_public_id(
    requester: Requester, exam_public_id: str | uuid.UUID, public_id: str | uuid.UUID
) -> tuple[Exam, Instance]:
    exam = access_exam_by_public_id(requester, exam_public_id)
    parsed = _parse_public_id(public_id)
    instance = instances_for(exam).filter(public_id=parsed).first() if parsed else None
    if instance is None or not instance.has_pixels:
        raise _not_found(requester, "image")
    return exam, instance


def access_exam_for_download(requester: Requester, public_id: str | uuid.UUID) -> Exam:
    """Return an exam whose files the requester may download, or raise Http404.

    A recipient of a view-only link gets the images shown but no file.
    """
    exam = access_exam_by_public_id(requester, public_id)
    if not requester.can_download or not images_visible(exam):
        raise _not_found(requester, "download")
    return exam


def access_package_by_public_id(
    requester: Requester, exam_public_id: str | uuid.UUID, public_id: str | uuid.UUID
) -> tuple[Exam, "Package"]:
    """Return a download package of an exam in scope, or raise Http404."""
    from viewbox.downloads.models import Package

    exam = access_exam_for_download(requester, exam_public_id)
    parsed = _parse_public_id(public_id)
    package = (
        Package.objects.filter(exam=exam, public_id=parsed).first() if parsed else None
    )
    if package is None:
        raise _not_found(requester, "package")
    return exam, package
