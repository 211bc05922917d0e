"""The DICOM receiver's database writer: group commit and its failures."""

import threading
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest
from django.db import IntegrityError
from pydicom.uid import generate_uid

from viewbox.audit.models import AuditEvent
from viewbox.conftest import make_exam, make_patient, package_path
from viewbox.ingest import dicom_receiver
from viewbox.ingest.dicom_import import check_dicom_file
from viewbox.ingest.dicom_receiver import DatabaseWriter
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


class TestCachedStudy:
    def test_second_instance_skips_study_lookup(
        self, writer, tmp_path, monkeypatch
    ) -> None:
        first, second = write_series(tmp_path, 2)
        dicom_receiver._store(check_dicom_file(first), writer)

        def no_lookup(checked: object) -> None:
            raise AssertionError("study and series looked up again")

        monkeypatch.setattr(dicom_receiver, "study_and_series_for", no_lookup)
        dicom_receiver._store(check_dicom_file(second), writer)
        assert Instance.objects.count() == 2
        assert Study.objects.count() == 1

    def test_cached_study_gets_its_exam_later(
        self, writer, california, tmp_path, monkeypatch
    ) -> None:
        monkeypatch.setattr(dicom_receiver, "_EXAM_CHECK_SECONDS", 0)
        first, second = write_series(tmp_path, 2)
        dicom_receiver._store(check_dicom_file(first), writer)
        assert Study.objects.get().exam is None

        alice = make_patient(
            california, "DEMO-1001", "Alice", "Testpatient", date(1980, 4, 12)
        )
        exam = make_exam(alice, california, "ACC1001")
        attach_waiting_studies(exam)
        dicom_receiver._store(check_dicom_file(second), writer)
        imports = AuditEvent.objects.filter(action="images.import").order_by("sequence")
        assert [event.exam_id for event in imports] == [None, exam.pk]
        assert [event.patient_id for event in imports] == [None, alice.pk]


def write_series(folder: Path, count: int) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    return [
        write_copy(
            DATA / "693_UNCR.dcm",
            folder / f"ct{number}.dcm",
            "DEMO-1001",
            "ACC1001",
            study=study,
            series=series,
        )
        for number in range(count)
    ]
