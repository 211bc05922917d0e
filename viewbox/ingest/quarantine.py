import logging
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction

from viewbox.ingest.models import QuarantinedFile

logger = logging.getLogger(__name__)


def quarantine_file(
    path: Path, kind: str, reason: str, *, move: bool
) -> QuarantinedFile:
    """Keep a rejected input file aside for staff, under a name of our own.

    The file is moved when ``move`` is set and the folder allows it, else
    copied, so that a read-only source folder still gets its files kept.
    """
    folder = Path(settings.QUARANTINE_DIR) / kind
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex}{path.suffix.lower()[:8]}"
    if move:
        try:
            shutil.move(path, target)
        except OSError:
            logger.warning("Could not move a rejected file, copying it instead")
            shutil.copyfile(path, target)
    else:
        shutil.copyfile(path, target)
    # PostgreSQL rejects NUL in text, and a reason may quote a damaged value.
    return QuarantinedFile.objects.create(
        kind=kind,
        original_name=path.name[:255],
        path=str(target),
        reason=reason.replace("\x00", ""),
    )


def remove_quarantined_file(instance: QuarantinedFile, **kwargs: object) -> None:
    """Delete a quarantined row's file once the deletion of the row commits.

    The file may contain patient data, so it goes with its row. Only files
    inside QUARANTINE_DIR are removed.
    """
    folder = Path(settings.QUARANTINE_DIR).resolve()
    path = Path(instance.path).resolve()
    if not path.is_relative_to(folder):
        logger.warning(
            "Kept the file of deleted quarantine row %d: it is outside the "
            "quarantine folder",
            instance.pk,
        )
        return
    row_id = instance.pk

    def remove() -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            logger.error(
                "Could not delete the file of quarantine row %d: %s",
                row_id,
                type(error).__name__,
            )

    transaction.on_commit(remove)
