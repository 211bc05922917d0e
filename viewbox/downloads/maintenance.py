import logging
import time
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone

from viewbox.downloads import actions, notices
from viewbox.downloads.models import Package

logger = logging.getLogger(__name__)


def run_maintenance() -> dict[str, int]:
    """Warn before packages go, delete expired ones, requeue stalled ones."""
    warned = notices.send_expiry_warnings()
    expired = 0
    for package in Package.objects.filter(
        status=Package.Status.READY, expires_at__lte=timezone.now()
    ):
        actions.expire_package(package)
        expired += 1
    requeued = sum(
        actions.retry_if_stalled(package)
        for package in Package.objects.filter(status=Package.Status.PREPARING)
    )
    _remove_abandoned_partial_files()
    return {"warned": warned, "expired": expired, "requeued": requeued}


def _remove_abandoned_partial_files() -> None:
    """Delete half-built files that a killed worker left behind.

    A build writes ``.<name>.*.partial`` beside its target and renames it when
    done; one untouched for longer than a stalled build may take is dead.
    """
    folder = Path(default_storage.path("packages"))
    if not folder.is_dir():
        return
    cutoff = time.time() - settings.PACKAGE_STALL_SECONDS
    for path in folder.glob(".*.partial"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                logger.info("Removed an abandoned partial package file")
        except FileNotFoundError:
            continue
