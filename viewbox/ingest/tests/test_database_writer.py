"""The DICOM receiver's database writer: group commit and its failures."""

import errno
import fcntl
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pydicom
import pytest
from django.core.files.storage import default_storage
from django.db import IntegrityError, OperationalError, connection
from django.tasks import TaskResult
from django.tasks.signals import task_enqueued
from pydicom.uid import generate_uid

from viewbox.audit.models import AuditEvent
from viewbox.conftest import make_exam, make_patient, package_path
from viewbox.ingest import database_writer, dicom_import, dicom_receiver
from viewbox.ingest.database_writer import DatabaseWriter
from viewbox.ingest.dicom_import import (
    CheckedFile,
    check_dicom_file,
    instance_file_name,
    link_durably,
    new_instance,
    study_and_series_for,
)
from viewbox.ingest.dicom_network import (
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    ReceivedDataSet,
    StoreResult,
)
from viewbox.ingest.dicom_staging import STAGING_FOLDER, create_staging, remove_staging
from viewbox.ingest.tests.test_dicom_import import write_copy
from viewbox.records.actions import attach_waiting_studies
from viewbox.records.models import Instance, Series, Study

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_SECONDS = 30
DATA = package_path("data_store", "data")


@pytest.fixture
def writer() -> Iterator[DatabaseWriter]:
    writer = DatabaseWriter()
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


@pytest.fixture
def placing() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def received(path: Path) -> ReceivedDataSet:
    """Return a staged file as the network layer hands it to the receiver."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ReceivedDataSet(
        path=path,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        calling_ae_title="STORESCU",
        size=path.stat().st_size,
    )


def create_study(uid: str) -> Callable[[], Study]:
    return lambda: Study.objects.create(study_instance_uid=uid)


def run_as_one_batch(
    writer: DatabaseWriter, functions: list[Callable[[], object]]
) -> list[object]:
    """Queue the functions while the writer is busy, so that they share a batch.

    Return each function's result, or the exception that run() raised.
    """
    release = threading.Event()
    busy = threading.Event()

    def hold_the_writer() -> None:
        busy.set()
        release.wait(WAIT_SECONDS)

    holder = threading.Thread(target=writer.run, args=(hold_the_writer,))
    holder.start()
    assert busy.wait(WAIT_SECONDS)

    outcomes: list[object] = [None] * len(functions)

    def run(index: int) -> None:
        try:
            outcomes[index] = writer.run(functions[index])
        except Exception as error:
            outcomes[index] = error

    callers = [
        threading.Thread(target=run, args=(index,)) for index in range(len(functions))
    ]
    for caller in callers:
        caller.start()
    # The callers are queued once the writer's queue contains all of them.
    while writer._queue.qsize() < len(functions):
        threading.Event().wait(0.01)
    release.set()
    for thread in [holder, *callers]:
        thread.join(WAIT_SECONDS)
    return outcomes


class TestGroupCommit:
    def test_failed_job_leaves_the_batch_committed(self, writer) -> None:
        def fail() -> None:
            Study.objects.create(study_instance_uid="1.2.3.2")
            raise ValueError("job failed")

        stored, failed = run_as_one_batch(writer, [create_study("1.2.3.1"), fail])
        assert isinstance(failed, ValueError)
        assert isinstance(stored, Study)
        assert list(Study.objects.values_list("study_instance_uid", flat=True)) == [
            "1.2.3.1"
        ]

    def test_failed_commit_fails_every_job(self, writer) -> None:
        # The foreign key is checked at commit on both databases, because
        # Django declares it deferred.
        def orphan_series() -> Series:
            return Series.objects.create(series_instance_uid="1.2.4.1", study_id=999)

        study, series = run_as_one_batch(
            writer, [create_study("1.2.3.1"), orphan_series]
        )
        assert isinstance(study, IntegrityError)
        assert isinstance(series, IntegrityError)
        assert Study.objects.count() == 0
        assert Series.objects.count() == 0

    def test_single_failed_job_raises_its_error(self, writer) -> None:
        def fail() -> None:
            Study.objects.create(study_instance_uid="1.2.3.1")
            raise ValueError("job failed")

        with pytest.raises(ValueError, match="job failed"):
            writer.run(fail)
        assert Study.objects.count() == 0
        assert writer.run(create_study("1.2.3.2")).study_instance_uid == "1.2.3.2"


class TestStop:
    def test_job_after_stop_runs_in_the_caller(self) -> None:
        writer = DatabaseWriter()
        writer.start()
        writer.stop()
        study = writer.run(create_study("1.2.3.1"))
        assert Study.objects.get().pk == study.pk


def store(path: Path, writer: DatabaseWriter) -> None:
    """Store a staged file as the receiver does."""
    dicom_receiver._store(check_dicom_file(path), writer)
    path.unlink()  # The network layer removes the staging name afterwards.


class TestCachedStudy:
    def test_second_instance_skips_study_lookup(
        self, writer, tmp_path, monkeypatch
    ) -> None:
        first, second = write_series(tmp_path, 2)
        store(first, writer)

        def no_lookup(checked: object) -> None:
            raise AssertionError("study and series looked up again")

        monkeypatch.setattr(database_writer, "study_and_series_for", no_lookup)
        store(second, writer)
        assert Instance.objects.count() == 2
        assert Study.objects.count() == 1

    def test_cached_study_gets_its_exam_later(
        self, writer, california, tmp_path, monkeypatch
    ) -> None:
        monkeypatch.setattr(database_writer, "_EXAM_CHECK_SECONDS", 0)
        first, second = write_series(tmp_path, 2)
        store(first, writer)
        assert Study.objects.get().exam is None

        alice = make_patient(
            california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
        )
        exam = make_exam(alice, california, "ACC1001")
        attach_waiting_studies(exam)
        store(second, writer)
        imports = AuditEvent.objects.filter(action="images.import").order_by("sequence")
        assert [event.exam_id for event in imports] == [None, exam.pk]
        assert [event.patient_id for event in imports] == [None, alice.pk]


class TestLinkedFile:
    def test_final_name_links_the_staged_file(
        self, writer, tmp_path, monkeypatch
    ) -> None:
        [path] = write_series(tmp_path, 1)
        links = []

        def count_links(*args: object, **kwargs: object) -> object:
            # The audit row comes after the wait for the file's fsync.
            links.append(path.stat().st_nlink)
            return real_record_event(*args, **kwargs)

        real_record_event = dicom_import.record_event
        monkeypatch.setattr(dicom_import, "record_event", count_links)
        dicom_receiver._store(check_dicom_file(path), writer)

        instance = Instance.objects.get()
        assert instance.public_id.hex == path.stem
        assert links == [2]
        assert os.path.samefile(path, default_storage.path(instance.file))

    def test_failed_commit_removes_the_final_name(
        self, writer, tmp_path, monkeypatch
    ) -> None:
        [path] = write_series(tmp_path, 1)

        def fail(*args: object, **kwargs: object) -> None:
            raise OperationalError("the database is restarting")

        monkeypatch.setattr(dicom_receiver, "save_instance", fail)
        with pytest.raises(OperationalError):
            dicom_receiver._store(check_dicom_file(path), writer)
        assert Instance.objects.count() == 0
        assert stored_dicom_files() == []
        assert path.stat().st_nlink == 1


class TestBackgroundPlacement:
    def test_failed_fsync_stores_nothing(
        self, writer, placing, tmp_path, monkeypatch
    ) -> None:
        [path] = write_series(tmp_path, 1)
        staged = path.stat().st_ino
        real_fsync = os.fsync

        def fail_on_staged_file(descriptor: int) -> None:
            if os.fstat(descriptor).st_ino == staged:
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(descriptor)

        monkeypatch.setattr(os, "fsync", fail_on_staged_file)
        result = dicom_receiver.handle_store(received(path), writer, placing)

        assert result.status == STATUS_OUT_OF_RESOURCES
        assert Instance.objects.count() == 0
        assert stored_dicom_files() == []
        assert path.stat().st_nlink == 1

    def test_quarantined_file_leaves_no_final_name(
        self, writer, placing, tmp_path
    ) -> None:
        [path] = write_series(tmp_path, 1)
        announced = received(path)
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)
        result = dicom_receiver.handle_store(announced, writer, placing)

        assert result.status != STATUS_SUCCESS
        assert Instance.objects.count() == 0
        assert stored_dicom_files() == []

    @pytest.mark.parametrize("slow", ["file", "folder"])
    def test_commit_waits_for_each_fsync(
        self, writer, placing, tmp_path, monkeypatch, slow
    ) -> None:
        [path] = write_series(tmp_path, 1)
        staged = path.stat().st_ino
        steps = []
        real_fsync, real_save_instance = os.fsync, dicom_receiver.save_instance

        def slow_fsync(descriptor: int) -> None:
            status = os.fstat(descriptor)
            is_slow = (
                stat.S_ISDIR(status.st_mode)
                if slow == "folder"
                else status.st_ino == staged
            )
            if is_slow:
                time.sleep(0.2)  # The check of the header ends first.
                steps.append("fsync")
            real_fsync(descriptor)

        def save_instance(*args: object, **kwargs: object) -> None:
            real_save_instance(*args, **kwargs)
            steps.append("saved")

        monkeypatch.setattr(os, "fsync", slow_fsync)
        monkeypatch.setattr(dicom_receiver, "save_instance", save_instance)
        result = dicom_receiver.handle_store(received(path), writer, placing)

        assert result == StoreResult(STATUS_SUCCESS)
        assert steps[-1] == "saved"
        assert "fsync" in steps
        assert Instance.objects.count() == 1

    def test_writes_go_on_during_placement(self, writer, placing, tmp_path) -> None:
        [path] = write_series(tmp_path, 1)
        others = []

        def place_while_writing() -> None:
            # A writer whose transaction stayed open through the placement
            # would run this job only after this function returned.
            thread = threading.Thread(
                target=lambda: others.append(writer.run(create_study("1.2.3.9")))
            )
            thread.start()
            thread.join(WAIT_SECONDS)

        dicom_receiver._store(
            check_dicom_file(path), writer, wait_for_placement=place_while_writing
        )
        assert len(others) == 1
        assert Instance.objects.count() == 1


class TestTurnLock:
    def test_commit_waits_for_held_lock(self, tmp_path) -> None:
        lock_path = tmp_path / "db.sqlite3.receivers.lock"
        writer = DatabaseWriter(lock_path)
        writer.start()
        try:
            # The lock file exists once the writer commits for the first time.
            writer.run(create_study("1.2.3.1"))
            other_process = os.open(lock_path, os.O_RDWR)
            fcntl.flock(other_process, fcntl.LOCK_EX)
            done = threading.Event()
            thread = threading.Thread(
                target=lambda: (writer.run(create_study("1.2.3.2")), done.set())
            )
            thread.start()
            assert not done.wait(0.3)
            fcntl.flock(other_process, fcntl.LOCK_UN)
            os.close(other_process)
            assert done.wait(WAIT_SECONDS)
            thread.join()
        finally:
            writer.stop()
        assert Study.objects.count() == 2

    def test_unusable_lock_file_still_commits(self, tmp_path, caplog) -> None:
        writer = DatabaseWriter(tmp_path / "missing" / "db.sqlite3.receivers.lock")
        writer.start()
        try:
            assert writer.run(create_study("1.2.3.1")).pk
            assert writer.run(create_study("1.2.3.2")).pk
        finally:
            writer.stop()
        assert Study.objects.count() == 2
        warnings = [
            r.getMessage() for r in caplog.records if "lock file" in r.getMessage()
        ]
        assert len(warnings) == 1
        assert "No such file" in warnings[0]

    def test_lock_only_for_sqlite_file(self) -> None:
        path = database_writer.turn_lock_path()
        if connection.vendor == "sqlite":
            assert path is not None
            assert path.name.endswith(".sqlite3.receivers.lock")
        else:
            assert path is None


@pytest.fixture
def queued_previews() -> Iterator[list[list[int]]]:
    """Collect the instance ids of each render_previews_of_instances task queued.

    The writer's thread has a task backend of its own, so the tasks are
    collected from the signal that every backend sends.
    """
    queued: list[list[int]] = []

    def collect(sender: object, task_result: TaskResult, **kwargs: object) -> None:
        if task_result.task.name == "render_previews_of_instances":
            queued.append(task_result.args[0])

    task_enqueued.connect(collect)
    yield queued
    task_enqueued.disconnect(collect)


class TestPreviewTasks:
    def test_one_task_queues_the_previews_of_a_series(
        self, tmp_path, queued_previews
    ) -> None:
        writer = DatabaseWriter()
        writer.start()
        for path in write_series(tmp_path, 3):
            store(path, writer)
        writer.stop()

        instance_ids = list(
            Instance.objects.order_by("pk").values_list("pk", flat=True)
        )
        assert queued_previews == [instance_ids]

    def test_previews_are_queued_after_a_second(
        self, writer, tmp_path, monkeypatch, queued_previews
    ) -> None:
        monkeypatch.setattr(database_writer, "_PREVIEW_SECONDS", 0.1)
        [path] = write_series(tmp_path, 1)
        store(path, writer)
        wait_until(lambda: bool(queued_previews))
        assert queued_previews == [[Instance.objects.get().pk]]


class TestSameInstanceAtOnce:
    def test_copy_stored_meanwhile_is_a_duplicate(
        self, writer, placing, tmp_path, monkeypatch
    ) -> None:
        [path] = write_series(tmp_path, 1)
        twin = path.with_name(f"{uuid.uuid4().hex}.dcm")
        shutil.copyfile(path, twin)
        store(path, writer)
        real_find_stored_copy = dicom_receiver.find_stored_copy
        lookups = []

        def not_yet_stored(
            checked: CheckedFile, restore: Callable[[str], None]
        ) -> object:
            # The first lookup ran before the other association's commit.
            lookups.append(checked)
            if len(lookups) == 1:
                return None
            return real_find_stored_copy(checked, restore)

        monkeypatch.setattr(dicom_receiver, "find_stored_copy", not_yet_stored)
        result = dicom_receiver.handle_store(received(twin), writer, placing)

        assert result == StoreResult(STATUS_SUCCESS)
        assert len(lookups) == 2
        instance = Instance.objects.get()
        assert stored_dicom_files() == [Path(default_storage.path(instance.file))]


class TestStaleStaging:
    def crashed_receiver_folder(self, writer: DatabaseWriter) -> Path:
        staging = Path(default_storage.path(STAGING_FOLDER)) / "4242-deadbeef"
        staging.mkdir(parents=True)
        (staging / ".lock").touch()
        return staging

    def test_unacknowledged_final_name_is_removed(self, writer) -> None:
        # A receiver that crashed after the link and before the commit.
        staging = self.crashed_receiver_folder(writer)
        [path] = write_series(staging, 1)
        checked = check_dicom_file(path)
        study, series = writer.run(lambda: study_and_series_for(checked))
        instance = new_instance(checked, study, series, uuid.UUID(path.stem))
        link_durably(path, instance.file)
        unlinked = staging / f"{uuid.uuid4().hex}.dcm"
        shutil.copyfile(path, unlinked)

        staging_of_new, lock = create_staging()
        remove_staging(staging_of_new, lock)

        assert not staging.exists()
        assert stored_dicom_files() == []
        assert Instance.objects.count() == 0

    def test_unreadable_unacknowledged_file_is_removed(self, writer) -> None:
        # Its final name comes from its staging name, without its header.
        staging = self.crashed_receiver_folder(writer)
        path = staging / f"{uuid.uuid4().hex}.dcm"
        path.write_bytes(b"not DICOM")
        link_durably(path, instance_file_name(uuid.UUID(path.stem)))

        staging_of_new, lock = create_staging()
        remove_staging(staging_of_new, lock)

        assert not staging.exists()
        assert stored_dicom_files() == []

    def test_older_series_folder_name_is_removed(self, writer) -> None:
        # Older receivers named files after their study and series.
        staging = self.crashed_receiver_folder(writer)
        [path] = write_series(staging, 1)
        checked = check_dicom_file(path)
        study, series = writer.run(lambda: study_and_series_for(checked))
        link_durably(path, f"dicom/{study.pk}/{series.pk}/{path.stem}.dcm")

        staging_of_new, lock = create_staging()
        remove_staging(staging_of_new, lock)

        assert not staging.exists()
        assert stored_dicom_files() == []

    def test_acknowledged_file_is_kept(self, writer) -> None:
        # A receiver that crashed after the commit and before the unlink.
        staging = self.crashed_receiver_folder(writer)
        [path] = write_series(staging, 1)
        dicom_receiver._store(check_dicom_file(path), writer)
        instance = Instance.objects.get()

        staging_of_new, lock = create_staging()
        remove_staging(staging_of_new, lock)

        assert not staging.exists()
        assert stored_dicom_files() == [Path(default_storage.path(instance.file))]

    def test_folder_of_running_receiver_is_left_alone(self) -> None:
        running, lock = create_staging()
        leftover = running / f"{uuid.uuid4().hex}.dcm"
        leftover.write_bytes(b"arriving")
        try:
            other, other_lock = create_staging()
            remove_staging(other, other_lock)
            assert leftover.read_bytes() == b"arriving"
        finally:
            remove_staging(running, lock)
        assert not running.exists()


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stored_dicom_files() -> list[Path]:
    return sorted(Path(default_storage.path("dicom")).rglob("*.dcm"))


def write_series(folder: Path, count: int) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    return [
        write_copy(
            DATA / "693_UNCR.dcm",
            # Named as the receiver's staging files are: the row's public id.
            folder / f"{uuid.uuid4().hex}.dcm",
            "DEMO-1001",
            "ACC1001",
            study=study,
            series=series,
        )
        for _ in range(count)
    ]
