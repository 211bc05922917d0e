"""Emails about packages. They hold no health information: no name, no
exam, no file, only a link to the portal's sign-in page."""

import logging
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.utils import timezone, translation

from viewbox.downloads.models import Package, PackageNotice

logger = logging.getLogger(__name__)


def _send(notice: PackageNotice, template: str) -> bool:
    context = {
        "portal_url": notice.portal_url,
        "keep_hours": settings.PACKAGE_KEEP_HOURS,
        "warn_hours": settings.PACKAGE_WARN_HOURS,
    }
    with translation.override(notice.language):
        subject = render_to_string(f"downloads/email/{template}_subject.txt", context)
        body = render_to_string(f"downloads/email/{template}.txt", context)
    try:
        send_mail(" ".join(subject.split()), body, None, [notice.email])
    except OSError as error:
        logger.warning(
            "Cannot send %s notice %d: %s", template, notice.pk, type(error).__name__
        )
        return False
    return True


def send_ready_notices(package: Package) -> None:
    for notice in package.notices.filter(ready_sent_at__isnull=True):
        if _send(notice, "ready"):
            PackageNotice.objects.filter(pk=notice.pk).update(
                ready_sent_at=timezone.now()
            )


def send_expiry_warnings() -> int:
    """Warn once per notice about packages that go within the warning time."""
    soon = timezone.now() + timedelta(hours=settings.PACKAGE_WARN_HOURS)
    notices = PackageNotice.objects.filter(
        package__status=Package.Status.READY,
        package__expires_at__lte=soon,
        warning_sent_at__isnull=True,
    )
    sent = 0
    for notice in notices:
        # Claim the notice first, so that two maintenance runs send one email.
        claimed = PackageNotice.objects.filter(
            pk=notice.pk, warning_sent_at__isnull=True
        ).update(warning_sent_at=timezone.now())
        if claimed and _send(notice, "expiring"):
            sent += 1
    return sent
