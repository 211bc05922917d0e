"""The DICOM receiver: a Storage SCP that files what modalities and PACS send.

``dicom_network`` runs the associations and writes each data set to a file
in a staging folder of the storage as its fragments arrive, so that memory
does not grow with the size of an instance or of a study, and the pixel
data is never decoded. Each file then goes through the checks of the
``import_dicom`` command (``check_dicom_file``), so that received instances
are validated, matched to exams and quarantined by the same rules. Success
is sent only once the file is in its final place, fsynced, and its row
committed.

The association threads check and fsync their files in parallel. One writer
thread makes the database changes of stored instances, so that the rows of
instances that arrive together over several associations are committed in
one transaction (group commit), and associations do not queue on SQLite's
write lock. Only quarantined files are recorded from the association's
thread.
"""

import contextlib
import fcntl
import logging
import os
import queue
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection, transaction

from viewbox.ingest.dicom_import import (
    CheckedFile,
    DatasetMismatchError,
    UnusableDicomError,
    attach_exam_if_waiting,
    check_dicom_file,
    find_stored_copy,
    new_instance,
    place_new_instance,
    save_instance,
    study_and_series_for,
)
from viewbox.ingest.dicom_network import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    ReceivedDataSet,
    StorageServer,
    StoreResult,
)
from viewbox.ingest.models import QuarantinedFile
from viewbox.ingest.quarantine import quarantine_file
from viewbox.records.models import Series, Study

logger = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"

# Storage SOP Classes (PS3.4 Annex B.5) of the modalities that an outpatient
# radiology group runs, and the documents that come with their studies.
STORAGE_SOP_CLASSES: Final = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image, For Processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography, For Processing
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis Image
    "1.2.840.10008.5.1.4.1.1.13.1.4",  # Breast Projection X-Ray, Presentation
    "1.2.840.10008.5.1.4.1.1.13.1.5",  # Breast Projection X-Ray, Processing
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image
    "1.2.840.10008.5.1.4.1.1.13.1.1",  # X-Ray 3D Angiographic Image
    "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image
    "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC Image
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC Image
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC Image
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC Image
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.50",  # Mammography CAD SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
)

# Transfer syntaxes (PS3.5 Annex A) accepted for every storage class. The
# receiver stores the bytes as sent, so it needs no codec for any of them.
# The receiver accepts the first syntax of this list that a proposed context
# holds. Compressed syntaxes come first, so that a sender that proposes its
# file's own syntax next to the uncompressed ones sends the file unchanged
# instead of decompressing it, which it may not be able to do.
TRANSFER_SYNTAXES: Final = (
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 RPCL (Lossless)
    "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
)

# Folder of the default storage where data sets are written as they arrive.
# Each receiver process has its own folder in it, locked while it runs.
STAGING_FOLDER: Final = "incoming"
_STAGING_LOCK: Final = ".lock"

_SAFE_AE_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")

# Maximum number of jobs that the writer commits in one transaction. A batch
# is what queued while the previous commit ran. With four associations,
# bench/store.py measured 1.2 to 1.4 jobs per batch on average.
_MAXIMUM_BATCH: Final = 64
# Series whose study and series rows the writer keeps, so that the instances
# after the first of a series need no lookup of them.
_CACHED_SERIES: Final = 256
# Seconds between two looks for the exam of a cached study that has none.
# The study is matched anyway when its order arrives (attach_waiting_studies);
# the look covers an order that arrived while the study row was created.
_EXAM_CHECK_SECONDS: Final = 1.0


def _quarantine_received(path: Path, calling_ae_title: str, reason: str) -> None:
    # The temporary name says nothing to staff; the new one names the sender.
    sender = _SAFE_AE_CHARACTERS.sub("_", calling_ae_title) or "unknown"
    named = path.with_name(f"C-STORE from {sender} {uuid.uuid4().hex[:8]}.dcm")
    try:
        path.rename(named)
        kept = quarantine_file(named, QuarantinedFile.Kind.DICOM, reason, move=True)
    except (OSError, DatabaseError) as error:
        logger.error(
            "Could not quarantine a rejected C-STORE data set: %s",
            type(error).__name__,
        )
        named.unlink(missing_ok=True)
        return
    logger.warning(
        "Rejected a C-STORE data set from %s, quarantined as %d: %s",
        sender,
        kept.pk,
        reason,
    )


def _drop_broken_connection() -> None:
    # A connection is kept for a whole association, and the writer's for the
    # receiver's life: opening one per instance, and on SQLite the checkpoint
    # when the last one closes, would cost more than storing the instance.
    # Only a broken one is replaced. It is tested only after a database
    # error, because on PostgreSQL the test is a query: a connection that
    # broke silently fails one request, whose sender retries, and is
    # replaced before the next.
    if connection.connection is not None and connection.errors_occurred:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()


class _Job[T]:
    def __init__(self, function: Callable[[], T]) -> None:
        self.function = function
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        # Set for a job submitted after the writer stopped, which wait() runs.
        self.inline = False


class DatabaseWriter:
    """Run the receiver's database changes in one thread, with group commit.

    ``run`` returns only once the transaction that contains the job's
    changes is committed. In a batch of several jobs each runs in a
    savepoint, so that a failed job leaves the others unchanged. When the
    commit fails, every job of the batch fails with that error.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        # Guards _stopped against a job queued while the thread ends.
        self._stopping_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run_batches, name="dicom-receiver-writer", daemon=True
        )
        # Series Instance UID to its study and series rows.
        self._series: dict[str, tuple[Study, Series]] = {}
        # Study primary key to when the writer last looked for its exam.
        self._exam_checked_at: dict[int, float] = {}
        self._series_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Commit the jobs already queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def submit[T](self, function: Callable[[], T]) -> "_Job[T]":
        """Queue function for the writer's thread; wait() returns its result."""
        job = _Job(function)
        with self._stopping_lock:
            job.inline = self._stopped
            if not job.inline:
                self._queue.put(job)
        return job

    def wait[T](self, job: "_Job[T]") -> T:
        """Return the result of a submitted job once its transaction committed."""
        if job.inline:
            # A request that outlived the server: run it here, alone.
            with transaction.atomic():
                return job.function()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return cast(T, job.result)

    def run[T](self, function: Callable[[], T]) -> T:
        """Run function in the writer's thread and transaction; return its result."""
        return self.wait(self.submit(function))

    def study_and_series(self, checked: CheckedFile) -> tuple[Study, Series]:
        """Return the rows of the file's study and series, created if new.

        The rows of a series seen before come from memory when the file's
        study and identifiers match them. The Accession Number and Patient
        ID of a study never change, so the check against them stays valid.
        """
        with self._series_lock:
            cached = self._series.get(checked.series_instance_uid)
        if cached is not None:
            study, series = cached
            if (
                study.study_instance_uid == checked.study_instance_uid
                and (study.accession_number, study.patient_id)
                == checked.study_identifiers
            ):
                return cached
        study, series = self.run(lambda: study_and_series_for(checked))
        with self._series_lock:
            if len(self._series) >= _CACHED_SERIES:
                self._series.clear()
                self._exam_checked_at.clear()
            self._series[series.series_instance_uid] = (study, series)
        return study, series

    def forget_series(self) -> None:
        """Drop the remembered rows, after an error that may concern them."""
        with self._series_lock:
            self._series.clear()
            self._exam_checked_at.clear()

    def exam_check_due(self, study: Study) -> bool:
        """Return whether to look again for an unmatched study's exam.

        Each look costs two queries, so an unmatched study is looked at once
        per _EXAM_CHECK_SECONDS instead of once per instance.
        """
        now = time.monotonic()
        with self._series_lock:
            checked_at = self._exam_checked_at.get(study.pk)
            if checked_at is not None and now - checked_at < _EXAM_CHECK_SECONDS:
                return False
            self._exam_checked_at[study.pk] = now
            return True

    def _run_batches(self) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                batch = [job]
                while len(batch) < _MAXIMUM_BATCH:
                    try:
                        queued = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if queued is None:
                        self._queue.put(None)
                        break
                    batch.append(queued)
                self._commit(batch)
        finally:
            # Jobs queued after the stop request are still committed.
            with self._stopping_lock:
                self._stopped = True
            while True:
                try:
                    late = self._queue.get_nowait()
                except queue.Empty:
                    break
                if late is not None:
                    self._commit([late])
            connection.close()

    def _commit(self, batch: list[_Job[Any]]) -> None:
        _drop_broken_connection()
        committed = False
        try:
            with transaction.atomic():
                if len(batch) == 1:
                    # No other job to protect: its error rolls back the whole
                    # transaction, without the statements of a savepoint.
                    _run_job(batch[0])
                else:
                    for job in batch:
                        try:
                            with transaction.atomic():
                                _run_job(job)
                        except _JobFailed:
                            continue
            committed = True
        except _JobFailed:
            pass  # The job's own error is in the job, and nothing was written.
        except Exception as error:
            logger.error(
                "Could not commit %d received instances: %s",
                len(batch),
                type(error).__name__,
            )
            for job in batch:
                if job.error is None:
                    job.error = error
        finally:
            for job in batch:
                if not committed and job.error is None:
                    # Reached only by an exception that is not an Exception.
                    job.error = DatabaseError("The batch was not committed")
                job.done.set()


def _run_job(job: _Job[Any]) -> None:
    try:
        job.result = job.function()
    except Exception as error:
        job.error = error
        # Leave the savepoint or transaction around the job by an exception,
        # so that its changes are rolled back.
        raise _JobFailed from error


class _JobFailed(Exception):
    pass


def _store(checked: CheckedFile, writer: DatabaseWriter) -> None:
    study, series = writer.study_and_series(checked)
    instance = new_instance(checked, study, series)
    placed = threading.Event()
    placing_errors: list[BaseException] = []

    def save() -> None:
        if study.exam_id is None and writer.exam_check_due(study):
            # Staff or an order may have matched the study since it was
            # cached, or its exam may have arrived while it was created.
            study.exam_id = (
                Study.objects.filter(pk=study.pk)
                .values_list("exam_id", flat=True)
                .first()
            )
            attach_exam_if_waiting(study)
        save_instance(instance, study, before_audit=wait_until_placed)

    def wait_until_placed() -> None:
        # The rows are inserted while the association's thread fsyncs the
        # file, but they are committed only once the file is on disk.
        placed.wait()
        if placing_errors:
            raise placing_errors[0]

    job = writer.submit(save)
    try:
        place_new_instance(checked, instance, move=True)
    except BaseException as error:
        placing_errors.append(error)
        raise
    finally:
        placed.set()
        if placing_errors:
            # The job fails with the same error; wait until it rolled back.
            with contextlib.suppress(BaseException):
                writer.wait(job)
    try:
        writer.wait(job)
    except BaseException:
        default_storage.delete(instance.file)
        writer.forget_series()
        raise
    if study.exam_id is None:
        logger.info("Stored instance %d in unmatched study %d", instance.pk, study.pk)


def handle_store(received: ReceivedDataSet, writer: DatabaseWriter) -> StoreResult:
    """Store one received data set and return the C-STORE status."""
    path = received.path
    announced = (received.sop_class_uid, received.sop_instance_uid)
    _drop_broken_connection()
    try:
        checked = check_dicom_file(path, announced, sha256=received.sha256)
        stored_copy = find_stored_copy(checked)
        if stored_copy is None:
            _store(checked, writer)
    except DatasetMismatchError as error:
        _quarantine_received(path, received.calling_ae_title, str(error))
        return StoreResult(STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, str(error))
    except UnusableDicomError as error:
        _quarantine_received(path, received.calling_ae_title, str(error))
        return StoreResult(STATUS_CANNOT_UNDERSTAND, str(error))
    except (OSError, DatabaseError) as error:
        # Not the sender's fault: nothing is kept, and the sender may retry.
        logger.error(
            "Could not store a C-STORE data set: %s: %s", type(error).__name__, error
        )
        return StoreResult(STATUS_OUT_OF_RESOURCES, "Storage failed; retry later")
    if stored_copy is not None and stored_copy.instance is not None:
        logger.info(
            "Received instance %d again; kept the stored copy",
            stored_copy.instance.pk,
        )
    return StoreResult(STATUS_SUCCESS)


def _close_database_connection() -> None:
    # Each association runs in its own thread with its own connection.
    connection.close()


def _accepted_contexts() -> dict[str, tuple[str, ...]]:
    contexts: dict[str, tuple[str, ...]] = dict.fromkeys(
        STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
    )
    contexts[VERIFICATION_SOP_CLASS] = TRANSFER_SYNTAXES
    return contexts


def _remove_stale_staging(staging_root: Path) -> None:
    """Delete the staging folders of receiver processes that ended.

    A process holds an exclusive lock on its folder's lock file while it
    runs, so a folder whose lock can be taken belongs to one that crashed
    or stopped.
    """
    if not staging_root.is_dir():
        return
    for folder in staging_root.iterdir():
        try:
            descriptor = os.open(folder / _STAGING_LOCK, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        finally:
            os.close(descriptor)
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("Removed the staging folder %s of a stopped receiver", folder.name)


def _create_staging() -> tuple[Path, int]:
    """Create and lock this process's staging folder; return it and the lock."""
    staging_root = Path(default_storage.path(STAGING_FOLDER))
    _remove_stale_staging(staging_root)
    staging = staging_root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    descriptor = os.open(
        staging / _STAGING_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return staging, descriptor


def start_receiver(
    host: str, port: int, listener: socket.socket | None = None
) -> StorageServer:
    """Start the receiver in background threads and return its server.

    ``listener`` is a listening socket shared with other receiver processes.
    Raises ValueError when no calling AE title is allowed, and OSError when
    the address cannot be used.
    """
    calling_ae_titles = list(settings.DICOM_CALLING_AE_TITLES)
    if not calling_ae_titles:
        raise ValueError(
            "VIEWBOX_DICOM_CALLING_AE_TITLES is empty; list the AE titles of the "
            "modalities and PACS allowed to send, separated by commas"
        )
    staging, lock = _create_staging()
    writer = DatabaseWriter()

    def stop() -> None:
        writer.stop()
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)

    try:
        server = StorageServer(
            (host, port),
            calling_ae_titles=calling_ae_titles,
            contexts=_accepted_contexts(),
            maximum_associations=settings.DICOM_MAX_ASSOCIATIONS,
            maximum_file_bytes=settings.DICOM_MAX_FILE_BYTES,
            staging=staging,
            store=lambda received: handle_store(received, writer),
            on_association_end=_close_database_connection,
            on_stop=stop,
            listener=listener,
        )
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)
        raise
    writer.start()
    server.start()
    return server
