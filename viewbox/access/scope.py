"""The one way to reach patient data from a request.

Every view that shows an exam, an image or a report looks it up here. A
lookup outside the requester's scope raises Http404, the same as an id that
does not exist, so an outsider cannot learn which ids are real.
"""

import logging
import uuid
from dataclasses import dataclass

from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from django.utils import timezone

from viewbox.access.models import ICode
from viewbox.records.models import Exam, Instance

logger = logging.getLogger(__name__)

SESSION_ICODE_ID = "viewbox_icode_id"


@dataclass(frozen=True)
class Requester:
    """Who is asking, and which exams they may see."""

    kind: str
    actor_id: int
    patient_id: int
    exam_ids: frozenset[int]
    client_address: str | None


def client_address(request: HttpRequest) -> str | None:
    # NOTE: behind a reverse proxy this is the proxy's address; the proxy
    # must pass the client's address in REMOTE_ADDR (gunicorn's
    # --forwarded-allow-ips) for per-client throttling to mean anything.
    return request.META.get("REMOTE_ADDR")


def requester_from_request(request: HttpRequest) -> Requester | None:
    """Return the requester of a signed-in session, or None.

    The I-Code is checked again on every request, so a code that expires or
    is revoked ends the sessions it opened.
    """
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


def _refuse(requester: Requester, what: str) -> Http404:
    logger.info("Refused %s lookup for %s %d", what, requester.kind, requester.actor_id)
    return Http404("Not found")


def access_exam_by_public_id(requester: Requester, public_id: str | uuid.UUID) -> Exam:
    parsed = _parse_public_id(public_id)
    exam = exams_for(requester).filter(public_id=parsed).first() if parsed else None
    if exam is None:
        raise _refuse(requester, "exam")
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
        raise _refuse(requester, "image")
    return exam, instance
