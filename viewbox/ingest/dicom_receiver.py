"""The DICOM receiver: a Storage SCP that files what modalities and PACS send.

``dicom_network`` runs the associations and writes each data set to a file
in a staging folder of the storage as its fragments arrive, so that memory
does not grow with the size of an instance or of a study, and the pixel
data is never decoded. Each file then goes through the checks of the
``import_dicom`` command (``check_dicom_file``), so that received instances
are validated, matched to exams and quarantined by the same rules.

Success is sent only once the file is fsynced under its final name, a hard
link, with its folder, and its row is committed. The file keeps its staging
name until then, so that a receiver that starts after a crash finds and
removes what was never acknowledged (``dicom_staging``).

The final name comes from the staging name, so other threads place each
file under it while its header is checked, and the associations check and
place their files in parallel. One writer thread makes the database
changes of stored instances, so that the rows of instances that arrive
together over several associations are committed in one transaction
(group commit). Only quarantined files are recorded from
the association's thread.

The arrival of a study is audited once per association, with its first
instance, and again when the study gets its exam. An entry per instance
took a fifth of the receiver's Python time, and the audit chain's lock
that each entry holds until its commit made receiver processes on
PostgreSQL take turns. An unmatched study is also logged once per
association.
"""

import functools
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DatabaseError, IntegrityError, connection

from viewbox.ingest.database_writer import (
    DatabaseWriter,
    drop_broken_connection,
    turn_lock_path,
)
from viewbox.ingest.dicom_import import (
    IMAGE_STORAGE_SOP_CLASSES,
    CheckedFile,
    DatasetMismatchError,
    UnusableDicomError,
    attach_exam_if_waiting,
    check_dicom_file,
    create_instance_folders,
    describe_storage_error,
    find_stored_copy,
    fsync_folders,
    instance_file_name,
    link_durably,
    link_into_storage,
    new_instance,
    save_instance,
)
from viewbox.ingest.dicom_network import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    VERIFICATION_SOP_CLASS,
    ReceivedDataSet,
    StorageServer,
    StoreResult,
)
from viewbox.ingest.dicom_staging import create_staging, remove_staging
from viewbox.ingest.models import QuarantinedFile
from viewbox.ingest.quarantine import quarantine_file
from viewbox.records.models import Study

logger = logging.getLogger(__name__)


# Storage SOP Classes (PS3.4 Annex B.5) of the modalities that an outpatient
# radiology group runs (IMAGE_STORAGE_SOP_CLASSES), and the documents that
# come with their studies.
STORAGE_SOP_CLASSES: Final = (
    *IMAGE_STORAGE_SOP_CLASSES,
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

_SAFE_AE_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")


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


# Seconds that an fsync thread waits at most for the end of a store before
# it drops the file's pages, so that a stuck store cannot hold up shutdown.
_PAGE_DROP_DELAY_SECONDS: Final = 10.0


class _BackgroundPlacement:
    """Place a received file under its final name while its header is checked.

    The final name comes from the staging name alone (``instance_file_name``).
    The file is linked to it at once, then two other threads fsync the file
    and its folder while the association's thread reads and checks the
    header, so that the disk's waits overlap with each other and with the
    check. storescu sent 1,000 CT instances over one association to a
    receiver on a new file system, four times. The median rate was 431
    instances a second, against 376 when the file was fsynced after the
    check, then linked, then its folder fsynced.

    A crash before ``wait`` returns may leave the final name with part of
    the file, but its row is committed only after ``wait``, and a receiver
    that starts after a crash removes final names without a row
    (``dicom_staging``). When the block ends, the final name is removed
    unless ``keep`` was called, and the file's clean pages are dropped from
    the page cache, as ``link_durably`` does, without the sender waiting.

    NOTE: the staging folder is not fsynced for each file, so a crash can
    lose the staging name and keep the final name without a row. Such a
    file is never shown, but nothing removes it.
    """

    def __init__(self, staged: Path, executor: ThreadPoolExecutor) -> None:
        self.name = instance_file_name(uuid.UUID(staged.stem))
        self._keep_final_name = False
        self._file_synced: Future[None] = Future()
        self._released = threading.Event()
        folders = link_into_storage(staged, self.name)
        try:
            executor.submit(self._fsync_file, staged)
            self._folders_synced = executor.submit(fsync_folders, folders)
        except BaseException:
            self._discard()
            raise

    def _fsync_file(self, staged: Path) -> None:
        try:
            descriptor = os.open(staged, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            self._file_synced.set_exception(error)
            return
        try:
            try:
                os.fsync(descriptor)
            except OSError as error:
                self._file_synced.set_exception(error)
                return
            self._file_synced.set_result(None)
            # The header is read from the pages before they are dropped. A
            # check that takes longer only reads them from the disk again.
            self._released.wait(_PAGE_DROP_DELAY_SECONDS)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)

    def wait(self) -> None:
        """Return once the file is on disk under its final name, or raise OSError."""
        self._file_synced.result()
        self._folders_synced.result()

    def keep(self) -> None:
        """Keep the final name: the instance's row that names it is committed."""
        self._keep_final_name = True

    def _discard(self) -> None:
        try:
            Path(default_storage.path(self.name)).unlink(missing_ok=True)
        finally:
            self._released.set()

    def __enter__(self) -> "_BackgroundPlacement":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._keep_final_name:
            self._released.set()
        else:
            self._discard()


# Association threads remember the studies whose arrival they audited.
_association = threading.local()


def _audited_studies() -> set[tuple[int, int | None]]:
    """Return the (study, exam) pairs audited in this association's thread."""
    audited: set[tuple[int, int | None]] | None = getattr(
        _association, "audited_studies", None
    )
    if audited is None:
        audited = _association.audited_studies = set()
    return audited


def _store(
    checked: CheckedFile,
    writer: DatabaseWriter,
    audited: set[tuple[int, int | None]] | None = None,
    wait_for_placement: Callable[[], None] | None = None,
) -> None:
    """Give the checked file its final name, on disk, and commit its rows.

    The file is linked to its final name and keeps its staging name, which
    the caller removes once this returns or raises. After a crash, the
    receiver finds both names in the staging folder (``dicom_staging``).
    An instance is audited unless its (study, exam) pair is in ``audited``,
    which gets the pair once the rows are committed. A caller that places
    the file in another thread passes ``wait_for_placement``, which returns
    once the file is on disk under its final name, or raises.

    The writer's transaction starts only once the file is on disk. On
    SQLite it holds the database's write lock, and the other receiver
    processes waited for it through each fsync: over four associations,
    inserting the rows while the file was fsynced, then committing, stored
    fewer instances a second than this (see ``bench/README.md``).
    """
    study, series = writer.study_and_series(checked)
    instance = new_instance(checked, study, series, uuid.UUID(checked.path.stem))
    if wait_for_placement is None:
        link_durably(checked.path, instance.file)
    else:
        wait_for_placement()
    audited_as: list[tuple[int, int | None]] = []

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
        pair = (study.pk, study.exam_id)
        audit = audited is None or pair not in audited
        save_instance(instance, study, queue_previews=False, audit=audit)
        writer.add_preview(instance.pk)
        if audit:
            audited_as.append(pair)

    try:
        writer.run(save)
    except BaseException:
        Path(default_storage.path(instance.file)).unlink(missing_ok=True)
        writer.forget_series()
        raise
    if audited is not None:
        audited.update(audited_as)
    if study.exam_id is None and audited_as:
        # Logged once per study and association, like the audit entry,
        # because a line per instance filled the log with 1,000 lines a series.
        logger.info(
            "Storing instances in unmatched study %d, the first as instance %d",
            study.pk,
            instance.pk,
        )


def handle_store(
    received: ReceivedDataSet, writer: DatabaseWriter, placing: ThreadPoolExecutor
) -> StoreResult:
    """Store one received data set and return the C-STORE status.

    ``placing`` gives the file its final name while its header is checked.
    """
    path = received.path
    announced = (received.sop_class_uid, received.sop_instance_uid)
    drop_broken_connection()
    try:
        with _BackgroundPlacement(path, placing) as placement:
            checked = check_dicom_file(path, announced)
            restore = functools.partial(link_durably, checked.path)
            stored_copy = find_stored_copy(checked, restore)
            if stored_copy is None:
                try:
                    _store(checked, writer, _audited_studies(), placement.wait)
                    placement.keep()
                except IntegrityError:
                    # Another association stored the same SOP Instance UID
                    # meanwhile: the same file is a duplicate, another a
                    # conflict.
                    stored_copy = find_stored_copy(checked, restore)
                    if stored_copy is None:
                        raise
    except DatasetMismatchError as error:
        _quarantine_received(path, received.calling_ae_title, str(error))
        return StoreResult(STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, str(error))
    except UnusableDicomError as error:
        _quarantine_received(path, received.calling_ae_title, str(error))
        return StoreResult(STATUS_CANNOT_UNDERSTAND, str(error))
    except (OSError, DatabaseError) as error:
        # Not the sender's fault: nothing is kept, and the sender may retry.
        logger.error(
            "Could not store a C-STORE data set: %s", describe_storage_error(error)
        )
        return StoreResult(STATUS_OUT_OF_RESOURCES, "Storage failed; retry later")
    if (
        stored_copy is not None
        and stored_copy.status == "duplicate"
        and stored_copy.instance is not None
    ):
        logger.info(
            "Received instance %d again; kept the stored copy",
            stored_copy.instance.pk,
        )
    return StoreResult(STATUS_SUCCESS)


def _end_association() -> None:
    # Each association runs in its own thread with its own connection.
    connection.close()
    _association.__dict__.clear()


def _accepted_contexts() -> dict[str, tuple[str, ...]]:
    contexts: dict[str, tuple[str, ...]] = dict.fromkeys(
        STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
    )
    contexts[VERIFICATION_SOP_CLASS] = TRANSFER_SYNTAXES
    return contexts


def start_receiver(
    host: str, port: int, listener: socket.socket | None = None
) -> StorageServer:
    """Start the receiver in background threads and return its server.

    Before it listens, it creates the folders of stored files and clears the
    staging folders that receiver processes which crashed left behind.
    ``listener`` is a listening socket shared with other receiver processes.
    Raises ValueError when no calling AE title is allowed, and OSError when the
    address or the storage cannot be used.
    """
    calling_ae_titles = list(settings.DICOM_CALLING_AE_TITLES)
    if not calling_ae_titles:
        raise ValueError(
            "VIEWBOX_DICOM_CALLING_AE_TITLES is empty; list the AE titles of the "
            "modalities and PACS allowed to send, separated by commas"
        )
    create_instance_folders()
    staging, lock = create_staging()
    connection.close()
    writer = DatabaseWriter(turn_lock_path())
    # Each association places one file at most at a time, with two fsyncs,
    # so two threads per association never keep one waiting.
    placing = ThreadPoolExecutor(
        2 * settings.DICOM_MAX_ASSOCIATIONS, thread_name_prefix="dicom-receiver-fsync"
    )

    def stop() -> None:
        writer.stop()
        placing.shutdown()
        remove_staging(staging, lock)

    try:
        server = StorageServer(
            (host, port),
            calling_ae_titles=calling_ae_titles,
            contexts=_accepted_contexts(),
            maximum_associations=settings.DICOM_MAX_ASSOCIATIONS,
            maximum_file_bytes=settings.DICOM_MAX_FILE_BYTES,
            staging=staging,
            store=lambda received: handle_store(received, writer, placing),
            on_association_end=_end_association,
            on_stop=stop,
            listener=listener,
        )
    except OSError:
        placing.shutdown()
        remove_staging(staging, lock)
        raise
    writer.start()
    server.start()
    return server
