import functools
import io
import logging
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal, cast

from django.conf import settings
from django.core.files.storage import default_storage
from django.db.models import F
from django.tasks import task
from django.utils import formats, timezone, translation
from PIL import Image

from viewbox.access.scope import instances_for
from viewbox.downloads import actions, notices
from viewbox.downloads.models import Package
from viewbox.downloads.packaging import (
    PackageError,
    PackageImage,
    PackageInfo,
    PackageSpaceError,
    build_package,
)
from viewbox.records.models import Instance
from viewbox.records.release import report_state
from viewbox.records.report_pdf import render_report_pdf
from viewbox.viewer.previews import preview_jpeg
from viewbox.viewer.rendering import RenderError

logger = logging.getLogger(__name__)

# The offline viewer's images: large enough for a laptop screen.
VIEWER_EDGE = 1024


@task()
def prepare_package(package_id: int) -> None:
    """Build a package file and mark it ready, or failed with a reason.

    The conditional update from queued to preparing is the claim: when two
    workers run the same task, only one of them gets the row.
    """
    now = timezone.now()
    claimed = Package.objects.filter(
        pk=package_id, status=Package.Status.QUEUED
    ).update(
        status=Package.Status.PREPARING,
        heartbeat_at=now,
        progress=0,
        attempts=F("attempts") + 1,
    )
    if not claimed:
        return
    package = Package.objects.select_related("exam__visit__location__group").get(
        pk=package_id
    )
    try:
        with translation.override(package.language):
            _build(package)
    except PackageSpaceError as error:
        logger.error("Package %d failed, the disk is full: %s", package.pk, error)
        _fail(package, "space")
    except (PackageError, RenderError, OSError) as error:
        logger.error("Package %d failed: %s", package.pk, type(error).__name__)
        _fail(package, "error")


def _fail(package: Package, failure: str) -> None:
    Package.objects.filter(pk=package.pk, status=Package.Status.PREPARING).update(
        status=Package.Status.FAILED, failure=failure
    )


def _build(package: Package) -> None:
    exam = package.exam
    key = actions.content_key(exam)
    instances = [i for i in instances_for(exam)]
    images, by_image = _package_images(instances)
    state = report_state(exam)
    report_pdf = render_report_pdf(exam, state.released) if state.released else None
    service_date = formats.date_format(exam.visit.date_of_service, "DATE_FORMAT")
    info = PackageInfo(
        title=exam.description,
        subtitle=f"{service_date} · {exam.visit.location.name}",
        patient_name=exam.visit.patient.display_name,
    )

    def render_frame(image: PackageImage, frame: int) -> bytes:
        instance = by_image[id(image)]
        try:
            return preview_jpeg(instance, frame=frame, edge=VIEWER_EDGE)
        except RenderError as error:
            # One frame the viewer cannot show must not cost the patient the
            # DICOM files, which another viewer may read.
            logger.warning(
                "Instance %d frame %d in a package: %s", instance.pk, frame, error
            )
            return _placeholder_jpeg()

    def progress(done: int, total: int) -> None:
        Package.objects.filter(pk=package.pk, status=Package.Status.PREPARING).update(
            progress=min(99, done * 100 // max(total, 1)), heartbeat_at=timezone.now()
        )

    name = f"packages/{package.public_id.hex}.{package.format}"
    # NOTE: packages are built in place in the filesystem storage's folder;
    # another storage backend would need a local build and an upload.
    target = Path(default_storage.path(name))
    target.parent.mkdir(parents=True, exist_ok=True)
    fmt: Literal["zip", "iso"] = (
        "iso" if package.format == Package.Format.ISO else "zip"
    )
    result = build_package(
        images, info, report_pdf, fmt, target, render_frame, progress
    )

    ready_at = timezone.now()
    marked = Package.objects.filter(
        pk=package.pk, status=Package.Status.PREPARING
    ).update(
        status=Package.Status.READY,
        progress=100,
        content_key=key,
        file=name,
        size=result.size,
        instance_count=result.instance_count,
        ready_at=ready_at,
        expires_at=ready_at + timedelta(hours=settings.PACKAGE_KEEP_HOURS),
    )
    if not marked:
        # Someone requeued it as stalled meanwhile; their build replaces ours.
        logger.warning("Package %d was taken over while building", package.pk)
        return
    logger.info("Package %d ready: %d instances", package.pk, result.instance_count)
    notices.send_ready_notices(package)


@functools.cache
def _placeholder_jpeg() -> bytes:
    """Return a plain dark gray square shown where a frame cannot be rendered."""
    buffer = io.BytesIO()
    Image.new("L", (256, 256), 64).save(buffer, format="JPEG")
    return buffer.getvalue()


def _open_stored(name: str) -> BinaryIO:
    return cast(BinaryIO, default_storage.open(name, "rb"))


def _package_images(
    instances: list[Instance],
) -> tuple[list[PackageImage], dict[int, Instance]]:
    images = []
    by_image: dict[int, Instance] = {}
    for instance in instances:
        series = instance.series
        label = " · ".join(
            part for part in (series.modality, series.description) if part
        )
        image = PackageImage(
            open_file=partial(_open_stored, instance.file),
            size=instance.size,
            series_key=series.pk,
            series_label=label,
            instance_number=instance.instance_number,
            number_of_frames=instance.number_of_frames if instance.has_pixels else 0,
        )
        images.append(image)
        by_image[id(image)] = instance
    return images, by_image
