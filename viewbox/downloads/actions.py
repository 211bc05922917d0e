import logging
from datetime import timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Count, Max
from django.utils import timezone

from viewbox.access import throttle
from viewbox.access.scope import Requester, instances_for
from viewbox.audit.actions import record_event
from viewbox.downloads import notices
from viewbox.downloads.models import Package, PackageNotice
from viewbox.records.models import Exam
from viewbox.records.release import report_state

logger = logging.getLogger(__name__)


def _enqueue(package: Package) -> None:
    from viewbox.downloads.tasks import prepare_package

    transaction.on_commit(lambda: prepare_package.enqueue(package.pk))


def request_package(
    requester: Requester,
    exam: Exam,
    fmt: str,
    *,
    email: str = "",
    portal_url: str = "",
    language: str = "en",
) -> Package:
    """Return the exam's live package in this format, queuing one if none.

    The partial unique constraint on live packages settles a race between
    two requests: the loser's insert fails and it takes the winner's row.
    """
    notice = {"email": email, "portal_url": portal_url, "language": language}
    if email and not _may_email(requester):
        notice["email"] = ""
    package = _live_package(exam, fmt)
    if package is None:
        try:
            with transaction.atomic():
                package = Package.objects.create(
                    exam=exam, format=fmt, language=language
                )
                # The notice is stored before the task can start, so that
                # a quick build still finds it.
                if email:
                    PackageNotice.objects.create(package=package, **notice)
                _enqueue(package)
        except IntegrityError:
            package = _live_package(exam, fmt)
            if package is None:
                raise
            _add_notice(package, notice)
    elif package.status == Package.Status.READY and package.content_key != content_key(
        exam
    ):
        # A corrected report or new images since it was built: the old file
        # must not go out again.
        expire_package(package)
        return request_package(
            requester, exam, fmt, email=email, portal_url=portal_url, language=language
        )
    else:
        retry_if_stalled(package)
        _add_notice(package, notice)
    record_event(
        "download.request",
        actor_kind=requester.kind,
        actor_id=requester.actor_id,
        patient_id=requester.patient_id,
        exam_id=exam.pk,
        client_address=requester.client_address,
    )
    logger.info("Package %d requested for exam %d", package.pk, exam.pk)
    return package


def content_key(exam: Exam) -> str:
    """Return what a package of the exam would hold now, as a short key."""
    released = report_state(exam).released
    report_id = released.pk if released else 0
    instances = instances_for(exam).aggregate(count=Count("pk"), last=Max("pk"))
    return f"{report_id}:{instances['count']}:{instances['last'] or 0}"


def _add_notice(package: Package, notice: dict[str, str]) -> None:
    if not notice["email"]:
        return
    PackageNotice.objects.create(package=package, **notice)
    # A package that became ready meanwhile will not send ready notices again.
    package.refresh_from_db(fields=["status"])
    if package.status == Package.Status.READY:
        notices.send_ready_notices(package)


def _may_email(requester: Requester) -> bool:
    """Count a notice address against the client; past the limit, send none.

    Anyone signed in can give any address, so the portal must not become a
    way to flood someone's mailbox.
    """
    keys = {"notice-client": throttle.bucket_key(requester.client_address or "")}
    if throttle.locked_buckets(settings.NOTICE_MAIL_THROTTLE, keys):
        logger.warning("Download notice address rejected: limit reached")
        return False
    throttle.record_failure(settings.NOTICE_MAIL_THROTTLE, keys)
    return True


def _live_package(exam: Exam, fmt: str) -> Package | None:
    return Package.objects.filter(
        exam=exam, format=fmt, status__in=Package.LIVE_STATUSES
    ).first()


def retry_if_stalled(package: Package) -> bool:
    """Queue a package again whose worker stopped reporting; return whether it did.

    A worker killed in the middle leaves the package preparing with an old
    heartbeat. The conditional update lets exactly one caller requeue it.
    """
    stale_before = timezone.now() - timedelta(seconds=settings.PACKAGE_STALL_SECONDS)
    requeued = Package.objects.filter(
        pk=package.pk, status=Package.Status.PREPARING, heartbeat_at__lt=stale_before
    ).update(status=Package.Status.QUEUED, progress=0)
    if requeued:
        logger.warning("Package %d stalled; queued again", package.pk)
        _enqueue(package)
    return bool(requeued)


def record_download(requester: Requester, package: Package) -> None:
    record_event(
        "download.file",
        actor_kind=requester.kind,
        actor_id=requester.actor_id,
        patient_id=requester.patient_id,
        exam_id=package.exam_id,
        client_address=requester.client_address,
    )


def expire_package(package: Package) -> None:
    """Delete a package's file and mark it expired; a new request starts over."""
    if package.file:
        default_storage.delete(package.file)
    Package.objects.filter(pk=package.pk).update(status=Package.Status.EXPIRED, file="")
    logger.info("Package %d expired and its file was deleted", package.pk)
