"""The receiver's staging folders, and the cleanup of what a crash left there.

Each receiver process writes incoming data sets to its own folder under
``media/incoming/`` and holds an exclusive lock on the folder's lock file
while it runs. A stored instance's file gets its final name as a hard link
before its row is committed, and loses its staging name after. A folder
whose lock can be taken belongs to a process that ended. In it, a file
with a second name whose row exists was acknowledged, and a file without
a committed row was not: its final name is removed too.
"""

import fcntl
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Final

from django.core.files.storage import default_storage

from viewbox.ingest.dicom_import import check_dicom_file, instance_file_name
from viewbox.records.models import Instance, Series

logger = logging.getLogger(__name__)

# Folder of the default storage where data sets are written as they arrive.
STAGING_FOLDER: Final = "incoming"
# Each staging folder's lock file. The one in STAGING_FOLDER itself is
# locked by a receiver while it clears stale folders.
_LOCK_NAME: Final = ".lock"
# A staged data set is named by the public id its instance row gets.
_STAGED_NAME = re.compile(r"^[0-9a-f]{32}\.dcm$")


def create_staging() -> tuple[Path, int]:
    """Clear stale staging folders, then create and lock this process's own.

    Return the folder and the descriptor that holds its lock.
    """
    root = Path(default_storage.path(STAGING_FOLDER))
    root.mkdir(parents=True, exist_ok=True)
    # Receiver processes that start together clear stale folders one at a
    # time, so that no two of them clear the same folder.
    clearing = os.open(root / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(clearing, fcntl.LOCK_EX)
        for folder in root.iterdir():
            if folder.is_dir():
                _clear_folder_if_stale(folder)
        staging = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        descriptor = os.open(
            staging / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    finally:
        os.close(clearing)
    return staging, descriptor


def remove_staging(staging: Path, lock: int) -> None:
    """Delete this process's folder and release its lock."""
    shutil.rmtree(staging, ignore_errors=True)
    os.close(lock)


def _clear_folder_if_stale(folder: Path) -> None:
    try:
        descriptor = os.open(folder / _LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        descriptor = -1
    except OSError:
        return
    try:
        if descriptor >= 0:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        removed = _clear_folder(folder)
    except BlockingIOError:
        return  # A running receiver has it locked.
    finally:
        if descriptor >= 0:
            os.close(descriptor)
    shutil.rmtree(folder, ignore_errors=True)
    logger.info(
        "Cleared the staging folder %s of a stopped receiver: removed %d stored "
        "files that were never acknowledged",
        folder.name,
        removed,
    )


def _clear_folder(folder: Path) -> int:
    """Remove the final names of the folder's unacknowledged files; count them."""
    removed = 0
    for path in folder.iterdir():
        if not _STAGED_NAME.match(path.name) or path.stat().st_nlink < 2:
            continue  # Never linked to a final name: rmtree removes it.
        public_id = uuid.UUID(path.stem)
        if Instance.objects.filter(public_id=public_id).exists():
            continue  # Acknowledged: the final name stays.
        try:
            final = _final_name(path, public_id)
        except Exception as error:
            logger.error(
                "Could not find the final name of staged file %s: %s",
                path.name,
                type(error).__name__,
            )
            continue
        if final is not None:
            final.unlink()
            removed += 1
    return removed


def _final_name(path: Path, public_id: uuid.UUID) -> Path | None:
    """Return the final name that path is linked to, or None."""
    final = Path(default_storage.path(instance_file_name(public_id)))
    if final.exists() and os.path.samefile(path, final):
        return final
    return _final_name_in_series_folder(path, public_id)


def _final_name_in_series_folder(path: Path, public_id: uuid.UUID) -> Path | None:
    """Return the final name in its series' folder, where older receivers put it.

    Files were named dicom/<study>/<series>/<public id>.dcm before their
    names came from the public id alone.
    """
    checked = check_dicom_file(path)
    series = (
        Series.objects.select_related("study")
        .filter(series_instance_uid=checked.series_instance_uid)
        .first()
    )
    if series is None:
        return None
    final = Path(
        default_storage.path(f"dicom/{series.study.pk}/{series.pk}/{public_id.hex}.dcm")
    )
    if final.exists() and os.path.samefile(path, final):
        return final
    return None
